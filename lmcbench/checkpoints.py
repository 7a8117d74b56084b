"""Model checkpoints: safetensors weights plus a config.json that rebuilds the architecture.

A checkpoint is in one of three forms (`FORMS`): the library's own modules ("original"), GLMC's
canonical form (LayerNorm → RMSNorm, "canonical"), or the attention circuit form on top of it
("circuit", heads of size D+1). The form is a deterministic function of the module structure, so
`load_model` rebuilds the original architecture, converts it, and loads the weights strictly.
For GPT-2 in the original form, config.json is also a valid Hugging Face config, so the directory
loads with `GPT2LMHeadModel.from_pretrained(directory)`; other forms, and MoE models, deliberately
omit the Hugging Face keys, so that a library loader fails loudly instead of building modules
(LayerNorms, dense FFNs) that are not there.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from lmcbench.io import load_checkpoint, save_checkpoint
from lmcbench.models import architecture_config, build_model


def _canonical(model: nn.Module) -> nn.Module:
    from lmcbench.symmetry.canonical import canonicalize

    return canonicalize(model)


def _circuit(model: nn.Module) -> nn.Module:
    from lmcbench.symmetry.canonical import canonicalize, circuit_form

    return circuit_form(canonicalize(model))


FORMS = {"original": lambda model: model, "canonical": _canonical, "circuit": _circuit}


def save_model(directory: str | Path, model: nn.Module, model_cfg: dict, meta: dict, form: str = "original",
               **info) -> Path:
    """Write `model` (in `form`, built from `model_cfg` for data `meta`) as safetensors + config.json."""
    if form not in FORMS:
        raise ValueError(f"unknown checkpoint form {form!r}; known: {sorted(FORMS)}")
    hf = getattr(model, "config", None)
    plain = form == "original" and not model_cfg.get("moe")  # a stock module a library loader can rebuild
    config = hf.to_dict() if plain and hasattr(hf, "to_dict") else {}
    config["lmcbench"] = {**architecture_config(model_cfg, meta), "form": form, **info}
    return save_checkpoint(directory, model.state_dict(), config)


def load_model(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved in `directory` and load its weights strictly; returns (model, lmcbench info)."""
    state, config = load_checkpoint(directory)
    if "lmcbench" not in config:
        raise ValueError(f"{Path(directory) / 'config.json'} has no 'lmcbench' section: not an lmcbench checkpoint")
    info = config["lmcbench"]
    model = FORMS[info.get("form", "original")](build_model(info["model"], info["meta"]))
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint {directory} does not match the architecture in its config.json: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:3]}")
    model.load_state_dict(state)
    return model.eval(), info
