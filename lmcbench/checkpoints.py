"""Model checkpoints: safetensors weights plus a config.json that rebuilds the architecture.

For GPT-2 the config.json is also a valid Hugging Face config, so a checkpoint directory loads with
`GPT2LMHeadModel.from_pretrained(directory)` as well as with `load_model`.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from lmcbench.io import load_checkpoint, save_checkpoint
from lmcbench.models import architecture_config, build_model


def save_model(directory: str | Path, model: nn.Module, model_cfg: dict, meta: dict, **info) -> Path:
    hf = getattr(model, "config", None)  # a Hugging Face config makes the directory from_pretrained-loadable
    config = hf.to_dict() if hasattr(hf, "to_dict") else {}
    config["lmcbench"] = {**architecture_config(model_cfg, meta), **info}
    return save_checkpoint(directory, model.state_dict(), config)


def load_model(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved in `directory` and load its weights strictly; returns (model, lmcbench info)."""
    state, config = load_checkpoint(directory)
    if "lmcbench" not in config:
        raise ValueError(f"{Path(directory) / 'config.json'} has no 'lmcbench' section: not an lmcbench checkpoint")
    info = config["lmcbench"]
    model = build_model(info["model"], info["meta"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match its architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval(), info
