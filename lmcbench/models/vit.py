"""timm VisionTransformer built from a config (GLMC Table 2 ViTs and their CPU-sized versions)."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer


def build(cfg: dict, meta: dict) -> VisionTransformer:
    embed_dim = cfg["embed_dim"]
    return VisionTransformer(
        img_size=meta["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=meta["in_chans"],
        num_classes=meta["num_classes"],
        embed_dim=embed_dim,
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_dim"] / embed_dim if "mlp_dim" in cfg else cfg.get("mlp_ratio", 4.0),
        qkv_bias=cfg.get("qkv_bias", True),
        global_pool=cfg.get("global_pool", "token"),
        drop_rate=cfg.get("dropout", 0.0),
        proj_drop_rate=cfg.get("dropout", 0.0),
        attn_drop_rate=cfg.get("attn_dropout", 0.0),
    )
