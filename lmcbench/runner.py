"""Run a job from a Snakemake `script:` shim or the CLI: logging, threads, and a clean failure.

Snakemake's `log:` file receives the Python log and everything written to stderr (tqdm's progress
bars included), so `results/logs/<rule>/…` shows what a job did and how far it got.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from lmcbench.numerics import job_threads
from lmcbench.methods import load_methods


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stderr)], force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextlib.contextmanager
def job_context(log_file: str | Path | None = None, threads: int | None = None) -> Iterator[None]:
    """Send stderr and logging to `log_file` (appending), and cap torch's CPU threads at `threads`
    (in the pinned numerics mode at `numerics.threads`, whatever the rule asked for)."""
    threads = job_threads(threads)
    torch = sys.modules.get("torch")   # a torch job has loaded it with its job module; table, figure and
    if threads and torch is not None:  # claims jobs never load it (tests/test_install.py checks they run without)
        torch.set_num_threads(int(threads))
    if log_file is None:
        configure_logging()
        try:
            yield
        finally:  # the handler holds this moment's stderr: a later command in the process sets up its own
            logging.getLogger().handlers.clear()
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", buffering=1) as fh, contextlib.redirect_stderr(fh):
        configure_logging()
        try:
            yield
        except BaseException:
            logging.getLogger("lmcbench").exception("job failed")
            raise
        finally:  # the handler writes to the log file, which closes here: later records must not reach it
            logging.getLogger().handlers.clear()


@contextlib.contextmanager
def snakemake_job(snakemake) -> Iterator[None]:
    """`with snakemake_job(snakemake): ...` inside a workflow/scripts shim; loads the config's plugins."""
    with job_context(snakemake.log[0] if snakemake.log else None, snakemake.threads):
        load_methods(snakemake.config["plugins"], tracks=())   # the default profile lists none
        yield
