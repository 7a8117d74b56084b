"""timm VisionTransformer built from a config (GLMC Table 2 ViTs and their CPU-sized versions)."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from lmcbench.config import schema_defaults


def build(cfg: dict, meta: dict) -> VisionTransformer:
    cfg = {**schema_defaults("vit_arch"), **cfg}   # keys the arch leaves out: the schema's defaults
    embed_dim = cfg["embed_dim"]
    return VisionTransformer(
        img_size=meta["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=meta["in_chans"],
        num_classes=meta["num_classes"],
        embed_dim=embed_dim,
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_dim"] / embed_dim,
        qkv_bias=cfg["qkv_bias"],
        global_pool=cfg["global_pool"],
        drop_rate=cfg["dropout"],
        proj_drop_rate=cfg["dropout"],
        attn_drop_rate=cfg["attn_dropout"],
    )
