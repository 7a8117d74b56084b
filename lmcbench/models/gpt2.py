"""Hugging Face GPT-2 built from a `GPT2Config` (never `from_pretrained` of a hub name)."""
from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel

from lmcbench.config import schema_defaults


def gpt2_config(cfg: dict, meta: dict) -> GPT2Config:
    cfg = {**schema_defaults("gpt2_arch"), **cfg}   # keys the arch leaves out: the schema's defaults
    vocab = meta["vocab_size"]
    dropout = cfg["dropout"]
    return GPT2Config(
        vocab_size=vocab,
        n_positions=cfg["n_positions"],
        n_embd=cfg["n_embd"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_inner=cfg.get("n_inner"),
        activation_function=cfg["activation_function"],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        tie_word_embeddings=cfg["tie_word_embeddings"],
        # ids inside the vocab, so HF does not warn about 50256 on small vocabularies
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def build(cfg: dict, meta: dict) -> GPT2LMHeadModel:
    config = gpt2_config(cfg, meta)
    config._attn_implementation = {**schema_defaults("gpt2_arch"), **cfg}["attn_implementation"]
    return GPT2LMHeadModel(config)
