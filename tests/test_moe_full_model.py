"""moe_full_model: the backbone spec rewired to MoE layers is an exact symmetry, and the job runs."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from conftest import data_cfg, fresh_model, gpt2_cfg, vit_cfg
from lmcbench.models.moe import insert_moe
from lmcbench.methods import names
from lmcbench.moe.full_model import align_full, moe_backbone_spec
from lmcbench.symmetry import apply, sample_element


def _logits(model, x, family):
    return model(x) if family == "vit" else model(input_ids=x).logits


@pytest.mark.parametrize("gating", ["dense", "shared"])
@pytest.mark.parametrize("family", ["vit", "gpt2"])
def test_backbone_permutations_are_exact_symmetries_of_the_moe_model(family, gating, datasets):
    cfg = vit_cfg({"depth": 2}) if family == "vit" else gpt2_cfg({"n_layer": 2})
    data = datasets[family]
    moe_cfg = {"n_experts": 3, "gating": gating, "placement": "first"}
    model = insert_moe(fresh_model(cfg, data, 0), moe_cfg, torch.Generator().manual_seed(0)).eval()
    spec = moe_backbone_spec(model, {**cfg, "moe": moe_cfg}, data.meta)
    assert "residual" in spec.names and not any(n.startswith("blocks.0.mlp") for n in spec.names)
    moved = copy.deepcopy(model)
    moved.load_state_dict(apply(spec, model.state_dict(), sample_element(spec, torch.Generator().manual_seed(1),
                                                                          classes=("perm",))))
    x = data.test[0][:4] if family == "vit" else data.test[:32].reshape(2, 16)
    first = next(iter(model.state_dict()))
    assert not torch.equal(moved.state_dict()[first], model.state_dict()[first])
    torch.testing.assert_close(_logits(moved, x, family), _logits(model, x, family), rtol=0, atol=1e-5)


def test_full_alignment_recovers_a_permuted_copy(datasets):
    cfg = vit_cfg({"depth": 2})
    data = datasets["vit"]
    moe_cfg = {"n_experts": 3, "gating": "dense", "placement": "first"}
    model = insert_moe(fresh_model(cfg, data, 0), moe_cfg, torch.Generator().manual_seed(0))
    spec = moe_backbone_spec(model, {**cfg, "moe": moe_cfg}, data.meta)
    state = model.state_dict()
    from lmcbench.moe import symmetry as S

    moved = apply(spec, state, sample_element(spec, torch.Generator().manual_seed(2), classes=("perm",)))
    moved = S.permute_experts(moved, "blocks.0.mlp", torch.tensor([2, 0, 1]))
    aligned = align_full(spec, state, moved, "full_expert_wm", {"rounds": 2})
    for k in state:
        torch.testing.assert_close(aligned[k], state[k], rtol=0, atol=1e-6)


def test_full_model_job(tmp_path, datasets):
    from lmcbench.checkpoints import save_model
    from lmcbench.experiments.moe import moe_full_model_job

    cfg = vit_cfg()
    ckpts = []
    for seed in (0, 1):
        ckpts.append(save_model(tmp_path / f"seed{seed}", fresh_model(cfg, datasets["vit"], seed), cfg,
                                datasets["vit"].meta, seed=seed))
    moe_cfg = {"n_experts": 2, "gating": "topk", "k": 1, "placement": "first", "hidden": 16}
    table = moe_full_model_job(tmp_path / "out", ckpts, moe_cfg,
                               {"steps": 4, "batch_size": 16, "lr": 0.01, "eval_every": 2, "eval_examples": 32},
                               data_cfg("vit"), {"points": 3, "splits": ["test"], "max_examples": 32, "batch_size": 64},
                               names("moe_full"), labels={"experiment": "full_model", "model": "vit"},
                               options={m: {"rounds": 1} for m in ("full_gate_wm", "full_expert_wm")})
    assert set(table["method"]) == set(names("moe_full")) and len(table) == 4 * 2
    assert pd.read_csv(tmp_path / "out" / "curve.csv")["lambda"].nunique() == 3
