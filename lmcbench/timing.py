"""Wall-clock seconds of a run in their own table (results/tables/timing.csv), so that result tables hold
only numbers that the same seed reproduces byte for byte. Jobs record their timings in provenance.json
under "timing": ACE a list of records (metric train_seconds, one per trained model), MoE-LMC a mapping
{finetune_s, align_s}. Per-rule wall time, CPU time and memory come from Snakemake's benchmark files
(`bench_rules`, `lmcbench bench rules`). pandas only."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

LABELS = ("experiment", "task", "regime", "method", "seed", "n_train", "perturbation", "dual_lr")
COLUMNS = ["source", "run_id", "what", *LABELS, "seconds"]


def timing_rows(provenance_file: str | Path, results: str | Path) -> list[dict]:
    """The timings of one job's provenance.json; `source` is its folder relative to `results`."""
    path = Path(provenance_file)
    prov = json.loads(path.read_text())
    source = path.parent.relative_to(results).as_posix() if path.is_relative_to(results) else str(path.parent)
    base = {"source": source, "run_id": prov.get("run_id", "")}
    timing = prov.get("timing") or []
    if isinstance(timing, dict):
        return [{**base, "what": key.removesuffix("_s"), "seconds": value} for key, value in sorted(timing.items())]
    return [{**base, "what": row.get("metric", "").removesuffix("_seconds"), "seconds": row.get("value"),
             **{k: row.get(k) for k in LABELS}} for row in timing]


def timing_table(record_files, out: str | Path, results: str | Path = "results") -> pd.DataFrame:
    """timing.csv from the provenance.json beside each job's record file (barriers.csv, records.csv)."""
    from lmcbench.tables import write_csv

    rows = [row for f in record_files if Path(f).with_name("provenance.json").exists()
            for row in timing_rows(Path(f).with_name("provenance.json"), Path(results))]
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table[["seed", "n_train"]] = table[["seed", "n_train"]].astype("Int64")   # integers beside MoE's blanks
    write_csv(table, out)
    return table


def bench_rules(results: str | Path = "results") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every job's benchmark record (rule, job, wall s, CPU s, peak RSS MB) and a per-rule summary, slowest first."""
    root = Path(results) / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no Snakemake benchmark files under {root}: run the workflow first")
    jobs = []
    for path in files:
        record = pd.read_csv(path, sep="\t").iloc[-1]
        parts = path.relative_to(root).with_suffix("").parts
        jobs.append({"rule": parts[0], "job": "/".join(parts[1:]) or parts[0], "wall_s": float(record["s"]),
                     "cpu_s": pd.to_numeric(record.get("cpu_time", "-"), errors="coerce"),
                     "max_rss_mb": pd.to_numeric(record["max_rss"], errors="coerce"),
                     "end": path.stat().st_mtime})   # Snakemake writes the file when the job ends
    jobs = pd.DataFrame(jobs)
    summary = (jobs.groupby("rule")
               .agg(jobs=("job", "size"), total_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"), mean_s=("wall_s", "mean"),
                    max_s=("wall_s", "max"), max_rss_mb=("max_rss_mb", "max"))
               .sort_values("total_s", ascending=False).round(1).reset_index())
    return jobs, summary


def dag_span_s(jobs: pd.DataFrame) -> float:
    """Wall seconds from the first job's start to the last job's end (`bench_rules` jobs)."""
    return float(jobs["end"].max() - (jobs["end"] - jobs["wall_s"]).min())
