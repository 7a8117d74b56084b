"""Model builders: every model is a real library module built from a config dict, never downloaded.

A checkpoint's config carries the builder's inputs (`family`, the model section, the data meta), so
`build_model` can rebuild the exact architecture from a checkpoint alone.
"""
from __future__ import annotations

import importlib

from torch import nn

# family -> module with a `build(arch, meta)`; imported on use, because timm and transformers each
# cost seconds to import and most jobs need only one of them.
BUILDERS = {"vit": "lmcbench.models.vit", "gpt2": "lmcbench.models.gpt2"}


def build_model(model_cfg: dict, meta: dict) -> nn.Module:
    """Build the model of a profile's model section (`family` + `arch`) for data described by `meta`."""
    family = model_cfg.get("family")
    if family not in BUILDERS:
        raise ValueError(f"unknown model family {family!r}; known families: {sorted(BUILDERS)}")
    model = importlib.import_module(BUILDERS[family]).build(model_cfg["arch"], meta)
    if model_cfg.get("moe"):  # MoE-LMC: FFNs replaced by MoE layers (weights come from the checkpoint)
        from lmcbench.models.moe import insert_moe

        model = insert_moe(model, model_cfg["moe"])
    return model


def architecture_config(model_cfg: dict, meta: dict) -> dict:
    """The JSON-serialisable part of (model config, data meta) needed to rebuild a model."""
    keep = ("num_classes", "in_chans", "img_size", "vocab_size")
    model = {"family": model_cfg["family"], "arch": dict(model_cfg["arch"])}
    if model_cfg.get("moe"):
        model["moe"] = dict(model_cfg["moe"])
    return {"model": model,
            "meta": {k: meta[k] for k in keep if k in meta}}
