"""Wall-clock seconds of a run in their own table (results/tables/timing.csv), so that result tables hold
only numbers that the same seed reproduces byte for byte. Jobs record their timings in provenance.json
under "timing": ACE a list of records (metric train_seconds, one per trained model), MoE-LMC a mapping
{finetune_s, align_s}. Per-rule wall time and memory are Snakemake's benchmarks (`lmcbench bench rules`).
pandas only."""
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
