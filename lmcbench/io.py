"""Atomic files, checkpoints and run provenance.

Every file lmcbench writes goes through :func:`atomic_write` or :func:`atomic_path`, so a killed job
never leaves a half-written output that Snakemake (or a human) could mistake for a finished one. The
file gets the mode an ordinary `open()` would give it (0666 less the umask: 0644 under umask 022;
`mkstemp` alone would leave 0600), and it is fsynced, then renamed, then its directory fsynced, so a
machine crash leaves either the old file or the complete new one.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lmcbench.numerics import state as numerics_state

if TYPE_CHECKING:   # torch and safetensors are imported where used: table and claims jobs never load them
    import torch


PROVENANCE_PACKAGES = (
    "lmcbench", "torch", "torchvision", "timm", "transformers", "numpy", "scipy",
    "pandas", "escnn", "snakemake", "safetensors",
)


def _umask() -> int:
    """The process umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, path: Path) -> None:
    """Give `tmp` the mode open() would have, make it durable, rename it to `path`, make the rename durable."""
    os.chmod(tmp, 0o666 & ~_umask())
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent, directory=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for writers that want a filename (savefig, to_csv); rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it is probably truncated or corrupt: "
                         "delete it and rerun the job that wrote it") from None


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(directory: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict) -> Path:
    """Write `model.safetensors` + `config.json` into `directory`, each atomically.

    Tied tensors (GPT-2's wte/lm_head) are stored once per storage; `load_checkpoint`
    returns exactly the keys the model's `state_dict()` had, so `load_state_dict` is strict.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, {}
    for key, value in state_dict.items():
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if ptr in seen:  # an alias of an earlier key: record it in the config instead of a copy
            config = {**config, "tied": {**config.get("tied", {}), key: seen[ptr]}}
            continue
        seen[ptr] = key
        tensors[key] = value.detach().to("cpu").contiguous()
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(directory / "config.json", config)
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(
            f"no checkpoint at {directory}: expected {weights.name} and config.json "
            "(written by `lmcbench train` or `lmcbench.io.save_checkpoint`)"
        )
    config = read_json(directory / "config.json")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights} is not a readable safetensors file ({error}); it is probably truncated "
                         "or corrupt: delete the checkpoint directory and rerun the job that wrote it") from None
    for alias, source in config.get("tied", {}).items():
        state[alias] = state[source]
    return state, config


# --------------------------------------------------------------------------- provenance
def git_commit(cwd: str | os.PathLike | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    """A hash of the lmcbench package's source files: changes with any edit, committed or not."""
    import hashlib

    root = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance(config: dict, seed: int | None = None) -> dict:
    """What is needed to rerun a job: its config, seed, code version and library versions."""
    import torch

    return {
        "seed": seed,
        "config": config,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "numerics": numerics_state(),   # mode, threads, kernel dispatch level, CPU model and ISA flags
    }


def run_id(payload: dict) -> str:
    """A short stable id for a job's configuration, used to join records with provenance files.
    The leading "r" keeps it a string in every CSV reader: a bare hex prefix can read as a number
    ("7e6939500000" crashed pandas' parser; "012345678901" would lose its zero)."""
    import hashlib

    return "r" + hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
