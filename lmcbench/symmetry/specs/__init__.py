"""Architecture registry: `spec_for(model)` dispatches on the module type.

Adding an architecture = one layout function (module tree -> `Layout`, mostly via the shared
`prenorm_blocks`) plus, for the shape-changing transforms of `lmcbench.symmetry.canonical` (circuit form,
width embedding), one `resize` function that builds a fresh module of the same family.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from lmcbench.symmetry.spec import Layout, SymmetrySpec, spec_from_layout


@dataclass(frozen=True)
class Architecture:
    layout: Callable[[nn.Module], Layout]
    # resize(model, width, head_dim, qkv_bias, hidden) -> fresh module of the same family
    resize: Callable[[nn.Module, int, int, bool, int], nn.Module]


# model class (module.qualname) -> module defining `ARCHITECTURE`; imported on use, since the model's
# library is then already loaded and jobs that touch one family need not import the other.
ARCHITECTURES: dict[str, str] = {
    "timm.models.vision_transformer.VisionTransformer": "lmcbench.symmetry.specs.vit",
    "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel": "lmcbench.symmetry.specs.gpt2",
}


def architecture_for(model: nn.Module) -> Architecture:
    for cls in type(model).__mro__:
        module = ARCHITECTURES.get(f"{cls.__module__}.{cls.__qualname__}")
        if module is not None:
            return importlib.import_module(module).ARCHITECTURE
    raise NotImplementedError(f"no symmetry layout registered for {type(model).__name__}")


def layout_for(model: nn.Module) -> Layout:
    return architecture_for(model).layout(model)


def spec_for(model: nn.Module) -> SymmetrySpec:
    return spec_from_layout(layout_for(model))


__all__ = ["ARCHITECTURES", "Architecture", "architecture_for", "layout_for", "spec_for"]
