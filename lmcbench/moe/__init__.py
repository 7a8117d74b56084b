"""MoE-LMC track (Tran et al., NeurIPS 2025; spec: shared/reference/moe.md).

* `lmcbench.models.moe` — the MoE layer (dense / topk / shared gating, stacked experts, vectorised
  dispatch, load-balancing loss) and `insert_moe`, which replaces FFNs of a timm ViT or HF GPT-2.
* `lmcbench.moe.symmetry` — the G(n) action (expert permutation as a GLMC `Space`, common gate
  translation) and per-expert hidden-unit permutations.
* `lmcbench.moe.matching` — Algorithm 1 (gate_wm / expert_wm + Step 2) and the naive, skip_order and
  best_order baselines.
* `lmcbench.moe.diagnostics` — whether a pair can test the claim: routing entropy, expert movement,
  cross-seed expert similarity, cost–barrier correlation; order ranks.
* `lmcbench.moe.full_model` — beyond the paper: whole-model alignment of MoE transformers on
  independently trained backbones.
* Curve summaries (chord AUC, ratios to naive, scaled excess barrier) sit with the barrier engine
  (`lmcbench.barrier`); the jobs (`moe_sweep_job`, `moe_full_model_job`) in `lmcbench.experiments.moe`.
"""
