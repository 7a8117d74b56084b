"""timm `VisionTransformer`: layout, spec, and a same-family rebuild at another width / head size.

Forward (timm 1.0.31, defaults no_embed_class=False, pre_norm=False): patch_embed.proj (Conv2d)
-> concat [cls_token; reg_token; patches] -> + pos_embed -> blocks (pre-norm) -> `norm` -> pool
-> `fc_norm` -> head. For token pooling `fc_norm` is Identity; for avg pooling `norm` is Identity
and `fc_norm` is the LayerNorm, applied after the mean over patch tokens. Both poolings are
linear over tokens, so they commute with every residual map and with mean-centring.
"""
from __future__ import annotations

import copy
from functools import partial

from timm.layers import Attention, DropPath, Mlp, PatchDropout
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from lmcbench.symmetry.spec import BlockNames, Layout, Ref, SymmetrySpec, norm_site, prenorm_blocks, spec_from_layout
from lmcbench.symmetry.specs import Architecture

# nn.Linear stores (out, in)
IN_AXIS, OUT_AXIS = 1, 0
BLOCK = BlockNames(norm1="norm1", attn="attn", qkv="attn.qkv", proj="attn.proj",
                   norm2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", act="mlp.act")


def _check_supported(model: VisionTransformer) -> None:
    """Features outside the pre-norm residual picture the layout encodes."""
    problems = {
        "global_pool must be 'token' or 'avg'": model.global_pool not in ("token", "avg"),
        "pre_norm (norm_pre) is not supported": not isinstance(model.norm_pre, nn.Identity),
        "patch-embed norm is not supported": not isinstance(model.patch_embed.norm, nn.Identity),
    }
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        problems[f"blocks.{i}: only timm Block/Attention/Mlp are supported"] = (
            type(blk) is not Block or type(a) is not Attention or type(blk.mlp) is not Mlp)
        problems[f"blocks.{i}: layer scale / qk-norm / scale-norm / gating are not supported"] = (
            not all(isinstance(m, nn.Identity) for m in (blk.ls1, blk.ls2, a.q_norm, a.k_norm, a.norm, blk.mlp.norm))
            or a.gate is not None)
    bad = [msg for msg, failed in problems.items() if failed]
    if bad:
        raise NotImplementedError("; ".join(bad))


def vit_layout(model: VisionTransformer) -> Layout:
    _check_supported(model)
    writers = [Ref("patch_embed.proj.weight", 0)]  # Conv2d (D, C, p, p): out-channels first
    if model.patch_embed.proj.bias is not None:
        writers.append(Ref("patch_embed.proj.bias", 0))
    writers += [Ref(name, 2) for name in ("cls_token", "reg_token", "pos_embed")
                if getattr(model, name) is not None]  # (1, tokens, D)
    block_writers, norms, attentions, mlps = prenorm_blocks(model, "blocks", BLOCK, IN_AXIS, OUT_AXIS)
    final = "norm" if not isinstance(model.norm, nn.Identity) else "fc_norm"
    head = [Ref("head.weight", IN_AXIS)] if isinstance(model.head, nn.Linear) else []
    if not isinstance(model.get_submodule(final), nn.Identity):
        norms.append(norm_site(model, final, head))
    return Layout(model.embed_dim, tuple(writers + block_writers), tuple(norms), tuple(attentions), tuple(mlps))


def vit_spec(model: VisionTransformer) -> SymmetrySpec:
    return spec_from_layout(vit_layout(model))


def _drop(module: nn.Module, attr: str) -> float:
    return getattr(module, attr, 0.0)


def resize_vit(model: VisionTransformer, width: int, head_dim: int, qkv_bias: bool, hidden: int) -> VisionTransformer:
    """A fresh (uninitialised) ViT like `model` with residual width `width`, heads of size
    `head_dim` and MLP width `hidden`, keeping heads, depth, pooling and dropout rates. Norms are
    timm defaults; the caller swaps them and loads weights."""
    blk = model.blocks[0]
    dpr = model.blocks[-1].drop_path1
    new = VisionTransformer(
        img_size=model.patch_embed.img_size, patch_size=model.patch_embed.patch_size,
        in_chans=model.patch_embed.proj.in_channels, num_classes=model.num_classes,
        global_pool=model.global_pool, embed_dim=width, depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        # timm builds int(dim * mlp_ratio); the +0.5 turns that truncation into rounding
        mlp_ratio=(hidden + 0.5) / width,
        qkv_bias=qkv_bias, proj_bias=blk.attn.proj.bias is not None,
        class_token=model.cls_token is not None, reg_tokens=model.num_reg_tokens,
        pos_embed="learn" if model.pos_embed is not None else "none", no_embed_class=model.no_embed_class,
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        act_layer=partial(copy.deepcopy, blk.mlp.act),
        drop_rate=model.head_drop.p, pos_drop_rate=model.pos_drop.p,
        patch_drop_rate=model.patch_drop.prob if isinstance(model.patch_drop, PatchDropout) else 0.0,
        proj_drop_rate=blk.attn.proj_drop.p, attn_drop_rate=blk.attn.attn_drop.p,
        drop_path_rate=dpr.drop_prob if isinstance(dpr, DropPath) else 0.0,
        weight_init="skip",
    )
    if head_dim * blk.attn.num_heads != width:  # timm's Attention takes an explicit head size
        for b in new.blocks:
            b.attn = Attention(width, b.attn.num_heads, attn_head_dim=head_dim, qkv_bias=qkv_bias,
                               proj_bias=b.attn.proj.bias is not None,
                               attn_drop=b.attn.attn_drop.p, proj_drop=b.attn.proj_drop.p)
    return new


ARCHITECTURE = Architecture(vit_layout, resize_vit)
