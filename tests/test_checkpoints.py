"""Checkpoints round-trip exactly, GPT-2 directories are Hugging Face loadable, and writes are atomic."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open

from conftest import fresh_model, gpt2_cfg, vit_cfg
from lmcbench.checkpoints import load_model, save_model
from lmcbench.io import atomic_path, atomic_write, load_checkpoint, read_json, save_checkpoint

VIT_META = {"num_classes": 10, "in_chans": 1, "img_size": 28}
TEXT_META = {"vocab_size": 64}


class _Data:
    def __init__(self, meta):
        self.meta = meta


def _inputs(family):
    g = torch.Generator().manual_seed(0)
    if family == "vit":
        return {"x": torch.randn(4, 1, 28, 28, generator=g)}
    return {"input_ids": torch.randint(0, TEXT_META["vocab_size"], (3, 16), generator=g)}


def _logits(model, inputs):
    with torch.no_grad():
        out = model(inputs["x"]) if "x" in inputs else model(input_ids=inputs["input_ids"])
    return out if torch.is_tensor(out) else out.logits


def _model(kind, seed=0):
    if kind == "vit":
        cfg = vit_cfg()
        return fresh_model(cfg, _Data(VIT_META), seed).eval(), cfg, VIT_META
    cfg = gpt2_cfg({"tie_word_embeddings": kind == "gpt2_tied"})
    return fresh_model(cfg, _Data(TEXT_META), seed).eval(), cfg, TEXT_META


@pytest.mark.parametrize("kind", ["vit", "gpt2_tied", "gpt2_untied"])
def test_save_load_round_trip_gives_identical_logits(kind, tmp_path):
    model, cfg, meta = _model(kind)
    inputs = _inputs("vit" if kind == "vit" else "gpt2")
    save_model(tmp_path / "ckpt", model, cfg, meta, seed=5, dataset="somewhere")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]

    loaded, info = load_model(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    assert not loaded.training
    assert info["seed"] == 5 and info["dataset"] == "somewhere"
    assert info["model"] == {"family": cfg["family"], "arch": cfg["arch"]}
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(_logits(loaded, inputs), _logits(model, inputs))


def test_tied_gpt2_is_stored_once_and_stays_tied(tmp_path):
    model, cfg, meta = _model("gpt2_tied")
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    save_model(tmp_path, model, cfg, meta)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    assert read_json(tmp_path / "config.json")["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    loaded, _ = load_model(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


def test_untied_gpt2_keeps_its_own_head(tmp_path):
    model, cfg, meta = _model("gpt2_untied")
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    save_model(tmp_path, model, cfg, meta)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert {"transformer.wte.weight", "lm_head.weight"} <= set(f.keys())
    assert "tied" not in read_json(tmp_path / "config.json")
    loaded, _ = load_model(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert loaded.lm_head.weight.data_ptr() != loaded.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("kind", ["gpt2_tied", "gpt2_untied"])
def test_gpt2_checkpoint_loads_with_hugging_face(kind, tmp_path):
    from transformers import GPT2LMHeadModel

    model, cfg, meta = _model(kind)
    save_model(tmp_path, model, cfg, meta, seed=0)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()  # a local directory, nothing is downloaded
    assert hf.config.n_embd == cfg["arch"]["n_embd"] and hf.config.vocab_size == meta["vocab_size"]
    assert hf.config.tie_word_embeddings == (kind == "gpt2_tied")
    inputs = _inputs("gpt2")
    assert torch.equal(_logits(hf, inputs), _logits(model, inputs))


# ----------------------------------------------------------------------------- atomic writes
class Boom(Exception):
    pass


def test_atomic_write_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target) as fh:
        fh.write("hello")
        assert not target.exists()  # nothing visible until the block finishes
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_atomic_write_leaves_nothing_when_the_block_raises(tmp_path, exc):
    target = tmp_path / "out.txt"
    with pytest.raises(exc):
        with atomic_write(target) as fh:
            fh.write("partial")
            raise exc
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_the_block_raises(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_write(target, "wb") as fh:
            fh.write(b"new but unfinished")
            raise Boom
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "table.csv"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent and tmp.suffix == ".csv"
        tmp.write_text("a,b\n1,2\n")
        assert not target.exists()
    assert target.read_text() == "a,b\n1,2\n"

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise Boom
    assert target.read_text() == "a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]

    fresh = tmp_path / "never.png"
    with pytest.raises(Boom):
        with atomic_path(fresh):
            raise Boom  # before anything was written to the temp file
    assert not fresh.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


# ----------------------------------------------------------------------------- errors
def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "models" / "vit" / "seed9"
    for loader in (load_model, load_checkpoint):
        with pytest.raises(FileNotFoundError) as info:
            loader(missing)
        assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.json"))):
        read_json(tmp_path / "nope.json")


def test_not_an_lmcbench_checkpoint(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"something": "else"})
    with pytest.raises(ValueError, match="lmcbench"):
        load_model(tmp_path)


def _rewrite_arch(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config["lmcbench"]["model"]["arch"].update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_weights_of_another_depth_give_a_value_error(tmp_path):
    model, cfg, meta = _model("vit")
    save_model(tmp_path, model, cfg, meta)
    _rewrite_arch(tmp_path, depth=2)  # config now describes a deeper model than the weights
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path)


def test_weights_of_another_family_give_a_value_error(tmp_path):
    vit, vcfg, vmeta = _model("vit")
    gpt, gcfg, gmeta = _model("gpt2_untied")
    save_model(tmp_path / "vit", vit, vcfg, vmeta)
    save_model(tmp_path / "gpt", gpt, gcfg, gmeta)
    (tmp_path / "gpt" / "model.safetensors").write_bytes((tmp_path / "vit" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path / "gpt")


def test_weights_of_another_width_give_a_value_error(tmp_path):
    model, cfg, meta = _model("vit")
    save_model(tmp_path, model, cfg, meta)
    _rewrite_arch(tmp_path, embed_dim=32)
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path)
