"""`lmcbench` command line: the same job functions the Snakemake rules call, for one-off use.

  lmcbench train --config default --model vit --seed 0 --out results/models/vit/seed0
  lmcbench align A_DIR B_DIR --method learned_full --opt steps=150 --dataset mnist5k --out results/my_pair
  lmcbench moe A_DIR B_DIR --method gate_wm --dataset mnist5k --out results/my_moe_pair
  lmcbench ace --config smoke --task nbody --method ace_eps --opt eps=0.1 --out results/my_ace
  lmcbench methods [--track moe_order] [--plugin my_methods.py]
  lmcbench config --profile paper [--key glmc.matchers]
  lmcbench compare results/tables tests/golden/smoke
  lmcbench bench rules | matching | matching-scale | throughput
  lmcbench claims --results results --profile default
  lmcbench readme --results results --out -
  lmcbench golden --results /tmp/smoke/results [--update]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

PROFILE_HELP = ("a shipped profile's name (default, smoke, paper, gpu_check: `lmcbench config --profile NAME`) "
                "or a YAML path; merged over the default profile")


def _method_options(args, track: str) -> dict:
    """`--opt` pairs checked against the method's options class (as the workflow checks them), before any loading."""
    from lmcbench import methods

    options = methods.cli_options(args.opt)
    methods.get(track, args.method).parse(options, f"--opt ({track} method {args.method})")
    return options


def _barrier_cfg(args) -> dict:
    return {"points": args.points, "splits": args.splits, "max_examples": args.max_examples,
            "batch_size": args.batch_size}


def _dataset_cfg(args) -> dict:
    cfg = {"name": args.dataset}
    if args.data_root:
        cfg["root"] = args.data_root
    for item in args.data_option or []:
        key, _, value = item.partition("=")
        cfg[key] = yaml.safe_load(value)
    return cfg


def _apply_numerics(args) -> None:
    """The profile's `numerics` block (the default's when no --config), overridden by --numerics and --threads."""
    from lmcbench import numerics
    from lmcbench.config import DEFAULT_PROFILE, profile_path

    cfg = {}
    if getattr(args, "config", None):   # read, not validated: the schema validator loads numpy
        for path in (DEFAULT_PROFILE, profile_path(args.config)):
            cfg.update((yaml.safe_load(path.read_text()) or {}).get("numerics") or {})
    if args.numerics:
        cfg["mode"] = args.numerics
    if getattr(args, "threads", None):
        cfg["threads"] = args.threads
    numerics.apply(cfg)


def _default_profile() -> dict:
    """The default profile, read (not checked): the CLI's defaults for config keys are its values."""
    from lmcbench.config import DEFAULT_PROFILE

    return yaml.safe_load(DEFAULT_PROFILE.read_text())


def _pair_arguments(p, track: str, method: str, config_key: str, barrier: dict) -> None:
    """The arguments `align` and `moe` share: two checkpoints, one method of `track` with its options, the barrier
    (defaults: `barrier`, the workflow's barrier block of the track in the default profile)."""
    p.add_argument("a", help="reference checkpoint directory (λ = 1)")
    p.add_argument("b", help="checkpoint directory to align (λ = 0)")
    p.add_argument("--method", default=method, help=f"a registered {track} method (`lmcbench methods --track {track}`)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help=f"an option of the method (repeatable; values read as YAML), checked as the workflow checks "
                        f"{config_key}; unset options take the method's defaults (`lmcbench methods`)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="load a plugin that registers methods first (repeatable; see README 'Add a method')")
    p.add_argument("--dataset", required=True, help="dataset name for the barrier, e.g. mnist5k, shakespeare, cifar10")
    p.add_argument("--data-root", help="local path for datasets that are not shipped with a package")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="extra dataset options, e.g. tokenizer=char")
    p.add_argument("--points", type=int, default=barrier["points"], help="λ grid size (default: %(default)s)")
    p.add_argument("--splits", nargs="+", default=barrier["splits"], help="(default: %(default)s)")
    p.add_argument("--max-examples", type=int, default=barrier["max_examples"], help="per split (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=barrier["batch_size"], help="(default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--log", help="append the log here instead of stderr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmcbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numerics", choices=["pinned", "fast"], default=None,
                        help="CPU numerics (default: the profile's, else pinned): pinned = AVX2 kernels and fixed "
                             "threads, the same numbers on any x86-64 machine; fast = full ISA, more threads")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model of a profile for one seed")
    p.add_argument("--config", default="default", help=PROFILE_HELP)
    p.add_argument("--model", required=True, help="a key of the profile's `models`")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--log", help="append the log here instead of stderr")

    p = sub.add_parser("align", help="align checkpoint B to A; write the aligned B (OUT/aligned_s*-s*/), "
                                     "the barrier curve (OUT/curve.csv) and barriers (OUT/barriers.csv)")
    defaults = _default_profile()
    _pair_arguments(p, "glmc", "vanilla", "glmc.matchers.<method>", defaults["barrier"])
    p.add_argument("--experiment", choices=["pairwise", "width_hetero"], default="pairwise",
                   help="pairwise: A and B share one architecture; width_hetero: B is narrower and is embedded "
                        "into A's width first (GLMC §5; no aligned checkpoint is exported)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("moe", help="align MoE checkpoint B (e.g. a sweep's seed1/) to A with an MoE-LMC expert-order "
                                   "method and naive, the reference of the ratios; write OUT/curve.csv, "
                                   "OUT/barriers.csv, OUT/ranks.csv")
    _pair_arguments(p, "moe_order", "gate_wm", "moe.options.<method>", {**defaults["barrier"], **defaults["moe"]["barrier"]})
    p.add_argument("--max-orders", type=int, default=defaults["moe"]["max_orders"],
                   help="evaluate all orders (best_order, ranks) up to this many (default: %(default)s)")

    p = sub.add_parser("ace", help="train one ACE method on one task of a profile (its accuracy setting, symmetric "
                                   "data) and evaluate it; write OUT/records.csv, trajectories.csv, curves.csv")
    p.add_argument("--config", default="default", help=PROFILE_HELP)
    p.add_argument("--task", choices=["image", "nbody"], required=True)
    p.add_argument("--method", default="ace_equality", help="a registered ace method (`lmcbench methods --track ace`)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the method (repeatable; values read as YAML) over the profile's "
                        "ace.options.<method>, checked as the workflow checks it; unset options take the defaults")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="load a plugin that registers methods first (repeatable; see README 'Add a method')")
    p.add_argument("--seed", type=int, action="append", help="a seed (repeatable; default: the profile's ace.seeds)")
    p.add_argument("--out", required=True, help="output directory (N-body data are simulated into OUT/data)")
    p.add_argument("--log", help="append the log here instead of stderr")

    p = sub.add_parser("compare", help="compare a run's CSV tables with reference ones (byte for byte unless "
                                       "--rtol/--atol); one line per difference, exit 1 on any")
    p.add_argument("run", help="folder of a run's tables, e.g. results/tables")
    p.add_argument("reference", help="folder of reference tables; each CSV in it must match, e.g. tests/golden/smoke")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numeric cells")
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numeric cells")

    p = sub.add_parser("config", help="print a profile's effective configuration: merged over default.yaml as "
                                      "Snakemake merges it, and checked (schema, matcher options)")
    p.add_argument("--profile", default="default", help=PROFILE_HELP)
    p.add_argument("--key", help="print only this dotted key, e.g. glmc.matchers or models.gpt2")
    p.add_argument("--schema", action="store_true", help="print the effective JSON schema instead: the schema file "
                   "with every registered method's options (the profile's plugins included), as the check uses it")

    p = sub.add_parser("methods", help="list the registered methods of every track with their options (name, type, "
                                       "default) and what each does")
    p.add_argument("--track", help="only this track (glmc, glmc_multi, moe_order, moe_full, ace)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE", help="load a plugin first")

    p = sub.add_parser("bench", help="measure: per-rule DAG times (rules), GLMC weight matching on a random GPT-2 "
                                     "pair (matching; GPT-2 small by default), matching time against width "
                                     "(matching-scale), training throughput (throughput)")
    p.add_argument("what", choices=["rules", "matching", "matching-scale", "throughput"])
    p.add_argument("--results", default="results", help="rules: the results folder of a finished run")
    p.add_argument("--config", default="default", help="throughput: " + PROFILE_HELP)
    p.add_argument("--models", nargs="+", default=["vit", "gpt2"], help="throughput: keys of the profile's models")
    p.add_argument("--steps", type=int, default=20, help="throughput: timed optimiser steps")
    p.add_argument("--device", default=None, help="throughput, matching: cpu or cuda (default: cuda when present)")
    p.add_argument("--size", choices=["ts", "small"], default=None,
                   help="matching: the paper's Tiny-Shakespeare GPT-2 (ts) or GPT-2 small; overrides --n-embd etc.")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 384, 512, 768], help="matching-scale")
    p.add_argument("--out", help="also write the table here (CSV)")
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--iterations", "--rounds", type=int, default=None,
                   help="matching rounds (default: 15; matching-scale: 3)")
    p.add_argument("--mlp-cost", choices=["l1", "cosine"], default="l1")
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("claims", help="evaluate the claims registry on a finished run's tables: "
                                      "RESULTS/tables/claims.csv and claims.tex (see lmcbench.claims)")
    p.add_argument("--results", default="results", help="the results folder of a finished run")
    p.add_argument("--profile", default="unspecified", help="profile name written into the ledger")
    p.add_argument("--registry", default=None, help="claims YAML (default results/reference/claims.yaml in the CWD)")

    p = sub.add_parser("readme", help="render a run's summary tables and claims ledger as markdown; "
                                      "--snapshot commits a run as reference, --splice fills a README block")
    p.add_argument("--results", default="results", help="a finished results folder or a snapshot of one")
    p.add_argument("--out", default="-", help="write the markdown here ('-': stdout)")
    p.add_argument("--snapshot", metavar="DIR", help="copy the run's tables and provenance summary to DIR "
                                                     "(e.g. results/reference/default_run) instead")
    p.add_argument("--splice", metavar="README", help="replace the README's block --name with the rendering")
    p.add_argument("--name", default="default", help="the block: <!-- BEGIN GENERATED: NAME -->")

    p = sub.add_parser("golden", help="compare a run's key tables (summaries, claims) with the golden files "
                                      "byte for byte (exit 1 on a difference), or --update them")
    p.add_argument("--results", required=True, help="a finished results folder (e.g. of the smoke profile)")
    p.add_argument("--golden", default=None, help="golden folder (default tests/golden/smoke in the CWD)")
    p.add_argument("--update", action="store_true", help="copy the run's tables into the golden folder")
    parser.add_argument("-v", "--debug", action="store_true", help="on an error, show the full traceback")
    for command in sub.choices.values():  # also after the subcommand: `lmcbench align … -v`
        command.add_argument("-v", "--debug", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, show the full traceback")
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except Exception as error:  # noqa: BLE001 - one clear line for users; the traceback with --debug
        if args.debug:
            raise
        print(f"lmcbench {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lmcbench {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args, parser) -> int:
    """Run the parsed command; errors propagate to `main`."""
    if args.command in ("claims", "readme", "golden"):   # table-only commands: no torch
        return _tables_command(args)
    _apply_numerics(args)   # before anything imports torch or numpy

    from lmcbench.runner import job_context

    if getattr(args, "plugin", None):
        from lmcbench.methods import load_methods

        load_methods(args.plugin, tracks=())
    if args.command == "compare":
        from lmcbench.compare import compare_dirs

        differences, notes = compare_dirs(args.run, args.reference, rtol=args.rtol, atol=args.atol)
        differing = sorted({line.split(": ", 1)[0] for line in differences})
        print("\n".join(notes + differences + [f"{len(differing)} tables differ: {', '.join(differing)}"
                                                if differences else "tables match"]))
        return 1 if differences else 0
    if args.command == "config":
        from lmcbench.config import load_profile

        config = load_profile(args.profile)
        if args.schema:
            from lmcbench.config import effective_schema
            from lmcbench.methods import load_methods

            load_methods(config["plugins"])
            config = effective_schema()
        for part in (args.key.split(".") if args.key else []):
            if not isinstance(config, dict) or part not in config:
                raise KeyError(f"--key {args.key}: no {part!r} in the effective config")
            config = config[part]
        print(yaml.safe_dump(config, sort_keys=False, width=120), end="")
        return 0
    if args.command == "methods":
        from lmcbench import methods

        if args.track and args.track not in methods.TRACKS:
            parser.error(f"--track {args.track!r}: tracks are {', '.join(methods.TRACKS)}")
        for track in [args.track] if args.track else methods.TRACKS:
            print(f"{track}: {methods.TRACKS[track].summary}")
            previous = None
            for row in methods.describe(track):   # the method's name on its first row only
                option = f"{row['option']} ({row['type']}) = {row['default']!r}" if row["option"] else ""
                name, previous = (row["method"] if row["method"] != previous else ""), row["method"]
                print(f"  {name:24s} {option:44s} {row['summary']}".rstrip())
        return 0
    if args.command == "bench":
        import pandas as pd

        from lmcbench import bench
        from lmcbench.tables import write_csv
        from lmcbench.timing import bench_rules

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        with job_context():
            if args.what == "rules":
                jobs, table = bench_rules(args.results)
                print(f"{len(jobs)} jobs, {jobs['wall_s'].sum():.0f} s of job time in all")
            elif args.what == "matching":
                size = bench.SIZES[args.size] if args.size else {"n_embd": args.n_embd, "n_layer": args.n_layer,
                                                                  "n_head": args.n_head, "vocab_size": args.vocab_size}
                table = pd.DataFrame([bench.bench_matching(**size, iterations=args.iterations or 15,
                                                           mlp_cost=args.mlp_cost, device=args.device)])
            elif args.what == "matching-scale":
                table = bench.bench_matching_scale(args.widths, args.n_layer, args.iterations or 3, args.mlp_cost,
                                                   args.vocab_size)
            else:
                from lmcbench.config import load_profile

                table = bench.bench_throughput(load_profile(args.config), args.models, args.steps, device=args.device)
        print(table.to_string(index=False) if args.what != "matching" else table.T.to_string(header=False))
        if args.out:
            write_csv(table, args.out)
        return 0
    if args.command == "train":
        from lmcbench.config import load_profile
        from lmcbench.experiments.train import train_job

        config = load_profile(args.config)
        if args.model not in config["models"]:
            parser.error(f"--model {args.model!r} is not in the profile's models: {sorted(config['models'])}")
        model_cfg = config["models"][args.model]
        with job_context(args.log):
            train_job(args.out, args.model, model_cfg, config["datasets"][model_cfg["dataset"]], args.seed)
        return 0
    if args.command == "align":
        from lmcbench.experiments.glmc import pairs_job

        options, barrier_cfg = _method_options(args, "glmc"), _barrier_cfg(args)
        with job_context(args.log):
            table = pairs_job([(args.a, args.b)], args.out, args.method, _dataset_cfg(args), barrier_cfg,
                              matcher_cfg=options, labels={"experiment": args.experiment}, seed=args.seed,
                              experiment=args.experiment, export=args.experiment == "pairwise")
        print(table[["split", "metric", "barrier", "barrier_midpoint", "argmax_lambda"]].to_string(index=False))
        return 0
    if args.command == "moe":
        from lmcbench.experiments.moe import moe_pair_job

        options, barrier_cfg = _method_options(args, "moe_order"), _barrier_cfg(args)
        with job_context(args.log):
            table = moe_pair_job(args.a, args.b, args.out, args.method, _dataset_cfg(args), barrier_cfg, options,
                                 args.max_orders)
        print(table[["method", "split", "metric", "barrier", "ratio_to_naive"]].to_string(index=False))
        return 0
    if args.command == "ace":
        from lmcbench import methods
        from lmcbench.experiments.ace import nbody_data_job, task_job
        from lmcbench.config import load_profile

        ace = load_profile(args.config)["ace"]
        options = {**ace.get("options", {}).get(args.method, {}), **methods.cli_options(args.opt)}
        methods.get("ace", args.method).parse(options, f"--opt (ace method {args.method})")   # before any job
        ace = {**ace, "options": {args.method: options},
               "experiments": {"accuracy": {"methods": [args.method], "seeds": args.seed or ace["seeds"]}}}
        nbody = {v: Path(args.out) / "data" / f"nbody_{v}.npz" for v in ("symmetric", "field")}
        with job_context(args.log):
            if args.task == "nbody":
                nbody_data_job(nbody, ace)
            table = task_job(args.task, ace, args.out, nbody if args.task == "nbody" else None)
        head = table[table["headline"] & (table["split"] == "test") & table["layer"].fillna("").isin(["", "output"])]
        print(head[["method", "seed", "eval", "metric", "value"]].to_string(index=False))
        return 0
    return 1


def _tables_command(args) -> int:
    if args.command == "claims":
        from lmcbench.claims import REGISTRY, claims_job, load_claims

        tables, registry = Path(args.results) / "tables", args.registry or REGISTRY
        needed = sorted({c["table"] for c in load_claims(registry)})
        ledger = claims_job([tables / n for n in needed], {"csv": tables / "claims.csv", "tex": tables / "claims.tex"},
                            args.profile, registry=registry)
        print(ledger[["claim", "scope", "verdict"]].to_string(index=False))
        return 0
    if args.command == "readme":
        from lmcbench import readme
        from lmcbench.tables import write_text

        if args.snapshot:
            print(f"wrote {readme.snapshot(args.results, args.snapshot)}")
            return 0
        text = readme.render(args.results)
        if args.splice:
            path = Path(args.splice)
            write_text(readme.splice(path.read_text(), args.name, text), path)
            print(f"{path}: block {args.name!r} regenerated from {args.results}")
        elif args.out == "-":
            sys.stdout.write(text)
        else:
            write_text(text, args.out)
        return 0
    from lmcbench import golden

    folder = args.golden or golden.SMOKE_GOLDEN
    if args.update:
        for path in golden.update_golden(args.results, folder):
            print(f"updated {path}")
        return 0
    problems = golden.check(args.results, folder)
    print("\n".join(problems) if problems else f"{args.results}: the key tables match {folder} byte for byte")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
