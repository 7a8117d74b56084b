"""Tidy result tables: concatenate per-job records, summarise, and put published numbers beside ours.

Per-job CSVs are long-format records; everything a paper needs (CSV, LaTeX) is derived here from
those records alone, so tables and figures rebuild without retraining.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from lmcbench.io import atomic_path

FAMILY_OF_DATASET = {"mnist5k": "vit", "digits": "vit", "cifar10": "vit", "cifar100": "vit", "tiny_imagenet": "vit",
                     "shakespeare": "gpt2", "tiny_shakespeare": "gpt2", "text_file": "gpt2"}


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def read_csv(path: str | Path) -> pd.DataFrame:
    """A table written by `concat_csv`; an experiment the profile does not run leaves an empty file."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def concat_csv(paths: Iterable[str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """Concatenate record files; with `out`, also write the result (atomically)."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing record files: {missing[:5]}")
    frame = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True) if paths else pd.DataFrame()
    if out is not None:
        write_csv(frame, out)
    return frame


# per-run columns some matchers add (learned matching: units moved from the start, chosen validation loss)
MATCHING_COLUMNS = ("moved_heads", "moved_mlp", "residual_shift", "matching_val_loss")


def summarise_barriers(barriers: pd.DataFrame, keys=("model", "dataset", "method", "split", "metric")) -> pd.DataFrame:
    """Mean ± std of both barrier definitions over seed pairs, and the mean of any MATCHING_COLUMNS
    the records carry (empty for matchers that do not report them)."""
    keys = list(keys)
    grouped = barriers.groupby(keys, sort=True)
    extra = {f"{c}_mean": (c, "mean") for c in MATCHING_COLUMNS if c in barriers}
    summary = grouped.agg(n_pairs=("barrier", "size"), barrier_mean=("barrier", "mean"),
                          barrier_std=("barrier", "std"), midpoint_mean=("barrier_midpoint", "mean"),
                          midpoint_std=("barrier_midpoint", "std"), **extra).reset_index()
    return summary.fillna({"barrier_std": 0.0, "midpoint_std": 0.0})


def attach_reference(summary: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Add the published number for the same method: the same dataset if the paper has it, else the
    paper's dataset for that model family (flagged in `paper_dataset`)."""
    ref = reference.rename(columns={"dataset": "paper_dataset", "mean": "paper_mean", "std": "paper_std"})
    rows = []
    for _, row in summary.iterrows():
        candidates = ref[(ref["method"] == row["method"]) & (ref["metric"] == row["metric"])]
        exact = candidates[candidates["paper_dataset"] == row["dataset"]]
        family = FAMILY_OF_DATASET.get(row["dataset"])
        fallback = candidates[(candidates["family"] == family) & candidates["default_for_family"]]
        match = exact if len(exact) else fallback
        comparable = row["split"] == "test" and row.get("experiment", "pairwise") == "pairwise"
        extra = match.iloc[0][["paper_dataset", "paper_mean", "paper_std", "source", "checked_against_paper"]] \
            if len(match) and comparable else pd.Series(dtype=object)
        rows.append({**row.to_dict(), **extra.to_dict()})
    return pd.DataFrame(rows)


def versus_published(reference: pd.DataFrame, sources: dict[str, tuple[pd.DataFrame, str]],
                     keys: Iterable[str]) -> pd.DataFrame:
    """One row per published number, with our mean ± std over the matching records beside it.

    `sources[metric]` = (our records, column) for each reference `metric`; a reference row selects
    records by its non-blank `keys` cells (a blank cell matches anything); `ours_n` = 0 says that this
    profile has no comparable run."""
    rows = []
    for _, ref in reference.iterrows():
        ours, column = sources[ref["metric"]]
        mask = pd.Series(True, index=ours.index)
        for key in keys:
            if key in ours and pd.notna(ref.get(key)) and ref.get(key) != "":
                mask &= ours[key] == ref[key]
        values = ours.loc[mask, column].dropna() if len(ours) else pd.Series(dtype=float)
        rows.append({**ref.to_dict(), "ours_mean": values.mean() if len(values) else float("nan"),
                     "ours_std": values.std() if len(values) > 1 else float("nan"), "ours_n": len(values)})
    return pd.DataFrame(rows)


def _latex_escape(text: str) -> str:
    return str(text).replace("_", "\\_")


def latex_summary(summary: pd.DataFrame, split: str = "test", metric: str = "loss") -> str:
    """Method × (model, dataset) table of 'mean ± std' chord barriers, with the published column."""
    part = summary[(summary["split"] == split) & (summary["metric"] == metric)].copy()
    part["ours"] = part.apply(lambda r: f"{r.barrier_mean:.2f} $\\pm$ {r.barrier_std:.2f}", axis=1)
    if "paper_mean" in part:
        part["paper"] = part.apply(lambda r: "--" if pd.isna(r.get("paper_mean")) else
                                   f"{r.paper_mean:.2f} $\\pm$ {r.paper_std:.2f} ({_latex_escape(r.paper_dataset)})", axis=1)
    part["column"] = (part["model"] + " / " + part["dataset"]).map(_latex_escape)
    part["method"] = part["method"].map(_latex_escape)
    wide = part.pivot(index="method", columns="column", values=[c for c in ("ours", "paper") if c in part])
    wide.columns = [f"{col} ({kind})" for kind, col in wide.columns]
    caption = f"{metric.capitalize()} barrier on the {split} split (chord definition), mean $\\pm$ std over seed pairs."
    return wide.reset_index().to_latex(index=False, escape=False, caption=caption, label=f"tab:barrier-{metric}")


def glmc_tables(barrier_files: Iterable[str | Path], outputs, reference: str | Path) -> pd.DataFrame:
    """Write glmc_barriers.csv (all experiments), glmc_curves.csv (pairwise and width-heterogeneous
    λ curves), glmc_simplex.csv (multi-model surfaces), glmc_summary.csv and glmc_summary.tex."""
    barrier_files = [Path(p) for p in barrier_files]
    barriers = concat_csv(barrier_files, outputs.barriers)
    multi = [p for p in barrier_files if "multi_model" in p.parts]
    concat_csv([p.with_name("curve.csv") for p in barrier_files if p not in multi], outputs.curves)
    concat_csv([p.with_name("surface.csv") for p in multi], outputs.simplex)
    summary = summarise_barriers(barriers, keys=("experiment", "model", "dataset", "method", "split", "metric"))
    summary = attach_reference(summary, pd.read_csv(reference))
    write_csv(summary, outputs.summary)
    write_text(latex_summary(summary[summary["experiment"] == "pairwise"]), outputs.latex)
    return summary


# --------------------------------------------------------------------------------------------- MoE-LMC
MOE_KEYS = ("experiment", "variant", "model", "dataset", "gating", "n_experts", "placement", "method", "split",
            "metric")


def _output(outputs, name: str):
    return outputs[name] if isinstance(outputs, dict) else getattr(outputs, name)


def summarise_moe(barriers: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seed pairs of the barrier, AUC and their ratios to naive, per MoE configuration."""
    keys = [k for k in MOE_KEYS if k in barriers]
    summary = barriers.groupby(keys, sort=True).agg(
        n_pairs=("barrier", "size"), barrier_mean=("barrier", "mean"), barrier_std=("barrier", "std"),
        auc_mean=("auc", "mean"), ratio_to_naive_mean=("ratio_to_naive", "mean"),
        auc_ratio_to_naive_mean=("auc_ratio_to_naive", "mean")).reset_index()
    return summary.fillna({"barrier_std": 0.0})


TESTABLE = {"routing_entropy": 0.8, "sim_matched": 0.5}  # issue 11: specialised routing, comparable experts


def moe_testability(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Per MoE configuration, the mean over seed pairs of every diagnostic (lmcbench.moe.diagnostics),
    sim_matched (the better of gate_wm / expert_wm) and `testable`: routing entropy ≤ 0.8 and matched
    experts correlating ≥ 0.5 across seeds, i.e. Step 1 has specialised experts to find."""
    if diagnostics.empty:
        return pd.DataFrame(columns=["testable"])
    keys = [k for k in MOE_KEYS if k in diagnostics and k not in ("method", "split", "metric")]
    numeric = [c for c in diagnostics.select_dtypes(include=["number", "bool"]).columns
               if c not in keys + ["seed_a", "seed_b"]]
    table = diagnostics.groupby(keys, sort=True)[numeric].mean().reset_index()
    table.insert(len(keys), "n_pairs", diagnostics.groupby(keys, sort=True).size().to_numpy())
    matched = [c for c in ("sim_gate_wm", "sim_expert_wm") if c in table]
    table["sim_matched"] = table[matched].max(axis=1) if matched else float("nan")
    table["testable"] = ((table["routing_entropy"] <= TESTABLE["routing_entropy"])
                         & (table["sim_matched"] >= TESTABLE["sim_matched"]))
    return table


def moe_tables(barrier_files: Iterable[str | Path], outputs, reference: str | Path) -> pd.DataFrame:
    """Write moe_barriers.csv, moe_curves.csv, moe_order_ranks.csv, moe_diagnostics.csv (from each
    job's curve.csv, ranks.csv and diagnostics.csv beside its barriers.csv), moe_summary.csv,
    moe_testability.csv and moe_vs_paper.csv (published numbers beside ours: test split, loss
    metric); `outputs` has those seven names."""
    barrier_files = [Path(p) for p in barrier_files]
    barriers = concat_csv(barrier_files, _output(outputs, "barriers"))
    concat_csv([p.with_name("curve.csv") for p in barrier_files], _output(outputs, "curves"))
    rank_files = [p.with_name("ranks.csv") for p in barrier_files if p.with_name("ranks.csv").exists()]
    frames = [f for f in (pd.read_csv(p) for p in rank_files if p.stat().st_size > 1) if len(f)]
    write_csv(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["method", "order", "rank", "n_orders", "barrier", "best_barrier", "naive_barrier", "scaled_excess"]),
        _output(outputs, "order_ranks"))
    summary = summarise_moe(barriers)
    write_csv(summary, _output(outputs, "summary"))
    diagnostics = concat_csv([p.with_name("diagnostics.csv") for p in barrier_files
                              if p.with_name("diagnostics.csv").exists()], _output(outputs, "diagnostics"))
    write_csv(moe_testability(diagnostics), _output(outputs, "testability"))
    test_loss = [frame[(frame["split"] == "test") & (frame["metric"] == "loss")] if len(frame) else frame
                 for frame in (barriers, read_csv(_output(outputs, "order_ranks")))]
    sources = {"rank": (test_loss[1], "rank"), "scaled_excess": (test_loss[1], "scaled_excess"),
               "loss_barrier": (test_loss[0], "barrier"), "loss_barrier_ratio_to_naive": (test_loss[0], "ratio_to_naive")}
    write_csv(versus_published(pd.read_csv(reference), sources,
                               ("experiment", "variant", "model", "gating", "n_experts", "placement", "method")),
              _output(outputs, "vs_paper"))
    return summary
