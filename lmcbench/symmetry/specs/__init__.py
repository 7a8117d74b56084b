"""Architecture registry: `spec_for(model)` dispatches on the module type.

Adding an architecture = one layout function (module tree -> `Layout`, mostly via the shared
`prenorm_blocks`) plus, for the shape-changing transforms of `lmcbench.canonical` (circuit form,
width embedding), one `resize` function that builds a fresh module of the same family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import GPT2LMHeadModel

from lmcbench.symmetry.spec import Layout, SymmetrySpec, spec_from_layout
from lmcbench.symmetry.specs.gpt2 import gpt2_layout, gpt2_spec, resize_gpt2
from lmcbench.symmetry.specs.vit import resize_vit, vit_layout, vit_spec


@dataclass(frozen=True)
class Architecture:
    layout: Callable[[nn.Module], Layout]
    # resize(model, width, head_dim, qkv_bias) -> fresh module of the same family
    resize: Callable[[nn.Module, int, int, bool], nn.Module]


ARCHITECTURES: dict[type, Architecture] = {
    VisionTransformer: Architecture(vit_layout, resize_vit),
    GPT2LMHeadModel: Architecture(gpt2_layout, resize_gpt2),
}


def architecture_for(model: nn.Module) -> Architecture:
    for cls in type(model).__mro__:
        if cls in ARCHITECTURES:
            return ARCHITECTURES[cls]
    raise NotImplementedError(f"no symmetry layout registered for {type(model).__name__}")


def layout_for(model: nn.Module) -> Layout:
    return architecture_for(model).layout(model)


def spec_for(model: nn.Module) -> SymmetrySpec:
    return spec_from_layout(layout_for(model))


__all__ = ["ARCHITECTURES", "Architecture", "architecture_for", "gpt2_layout", "gpt2_spec",
           "layout_for", "resize_gpt2", "resize_vit", "spec_for", "vit_layout", "vit_spec"]
