"""Experiment jobs of all three tracks: what one Snakemake rule (or one CLI call) does, end to end.

Each job reads its inputs, runs the track's algorithms (lmcbench.matchers, lmcbench.moe, lmcbench.ace,
the barrier engine lmcbench.barrier), and writes its outputs atomically together with a
`provenance.json` (config, seed, git commit, package versions). Tidy records carry a `run_id` that
names the provenance they came from. The algorithms hold no job code.

* `train` — train one seed of one model (GLMC models, MoE backbones).
* `glmc` — pairwise alignment and interpolation, multi-model simplex, width-heterogeneous pairs.
* `moe` — MoE fine-tuning per seed on a frozen backbone, all-pairs alignment, full-model alignment.
* `ace` — ACE tasks, training runs per method and experiment, N-body data.
"""
