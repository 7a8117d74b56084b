"""Hugging Face `GPT2LMHeadModel`: layout, spec, and a same-family rebuild at another width / head size.

Forward: wte + wpe -> blocks (pre-norm, Conv1D weights stored (in, out)) -> ln_f -> lm_head
(nn.Linear (V, D), no bias). lm_head is tied to wte by default; both keys are in the state dict,
so the layout lists wte as a writer and lm_head as a reader. For permutations and orthogonal maps
the two rules give the same tensor (logits x wte^T -> (x O)(wte O)^T), so a tied model stays tied.
"""
from __future__ import annotations

import copy

from torch import nn
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from lmcbench.symmetry.spec import BlockNames, Layout, Ref, SymmetrySpec, norm_site, prenorm_blocks, spec_from_layout
from lmcbench.symmetry.specs import Architecture

# Conv1D stores (in, out)
IN_AXIS, OUT_AXIS = 0, 1
BLOCK = BlockNames(norm1="ln_1", attn="attn", qkv="attn.c_attn", proj="attn.c_proj",
                   norm2="ln_2", fc1="mlp.c_fc", fc2="mlp.c_proj", act="mlp.act")


def _check_supported(model: GPT2LMHeadModel) -> None:
    cfg = model.config
    if cfg.add_cross_attention:
        raise NotImplementedError("cross-attention blocks are not supported")
    if not cfg.scale_attn_weights:
        # resize_gpt2 / circuit_form assume the 1/sqrt(head_dim) score scaling
        raise NotImplementedError("scale_attn_weights=False is not supported")


def gpt2_layout(model: GPT2LMHeadModel) -> Layout:
    _check_supported(model)
    writers = [Ref("transformer.wte.weight", 1), Ref("transformer.wpe.weight", 1)]  # Embedding (n, D)
    block_writers, norms, attentions, mlps = prenorm_blocks(model, "transformer.h", BLOCK, IN_AXIS, OUT_AXIS)
    norms.append(norm_site(model, "transformer.ln_f", [Ref("lm_head.weight", 1)]))  # nn.Linear (V, D)
    width = model.config.n_embd
    vocab = (Ref("transformer.wte.weight", 0), Ref("lm_head.weight", 0))
    return Layout(width, tuple(writers + block_writers), tuple(norms), tuple(attentions), tuple(mlps), vocab)


def gpt2_spec(model: GPT2LMHeadModel) -> SymmetrySpec:
    return spec_from_layout(gpt2_layout(model))


def _set_head_dim(attn: nn.Module, head_dim: int) -> None:
    """HF's GPT2Attention derives head_dim = n_embd / n_head; the circuit form needs another size.
    Its forward only uses head_dim, split_size, scaling and the two Conv1Ds, so set those
    (as the official code does for transformers 4.50 [official code])."""
    width = attn.c_proj.nf
    attn.head_dim = head_dim
    attn.split_size = attn.num_heads * head_dim
    attn.c_attn = Conv1D(3 * attn.split_size, width)
    attn.c_proj = Conv1D(width, attn.split_size)
    attn.scaling = head_dim ** -0.5  # scale_attn_weights is required by the layout
    if attn.scale_attn_by_inverse_layer_idx:
        attn.scaling /= float(attn.layer_idx + 1)


def resize_gpt2(model: GPT2LMHeadModel, width: int, head_dim: int, qkv_bias: bool, hidden: int) -> GPT2LMHeadModel:
    """A fresh, untied GPT-2 like `model` with residual width `width`, heads of size `head_dim` and
    MLP width `hidden`, keeping heads, depth, vocabulary and dropout. (Conv1D always has a bias, so
    `qkv_bias` has no effect.) Norms are LayerNorms; the caller swaps them and loads weights."""
    cfg = copy.deepcopy(model.config)
    cfg.n_inner = hidden
    cfg.n_embd = width
    cfg.tie_word_embeddings = False
    new = GPT2LMHeadModel(cfg)
    if head_dim * cfg.n_head != width:
        for block in new.transformer.h:
            _set_head_dim(block.attn, head_dim)
    return new


ARCHITECTURE = Architecture(gpt2_layout, resize_gpt2)
