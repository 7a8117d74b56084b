"""MoE-LMC `specialised` variant: the similarity-at-initialisation diagnostic and the effective config."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from conftest import fresh_model, vit_cfg
from lmcbench.config import load_profile
from lmcbench.models.moe import insert_moe
from lmcbench.moe import diagnostics as D
from lmcbench.moe import matching as M
from lmcbench.moe import symmetry as S
from lmcbench.tasks import make_task

PREFIX = "blocks.0.mlp"


def test_similarity_at_initialisation_tells_a_shared_init_from_a_learned_match(datasets):
    """B is A moved by a random element of G(n) (and hidden permutations): matched experts correlate 1.
    If the two MoEs started as that same pair, the similarity at initialisation is 1 too (shared init);
    if they started at zero-output experts, it is 0 (all the similarity came from training)."""
    cfg, data = vit_cfg({"depth": 2}), datasets["vit"]
    dense = fresh_model(cfg, data, 0)
    x, _ = make_task(data, cfg).eval_tensors("test", 16)
    moe_cfg = {"n_experts": 4, "gating": "topk", "k": 2, "placement": "first", "hidden": 16}
    model = insert_moe(copy.deepcopy(dense), moe_cfg, torch.Generator().manual_seed(0)).eval()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    tau, c_w, c_b = S.random_element(a, PREFIX, g, scale=2.0)
    b = S.permute_hidden(S.act(a, PREFIX, tau, c_w, c_b), PREFIX, S.random_hidden_perms(a, PREFIX, g))
    found = M.expert_order(a, b, PREFIX, "expert_wm")
    assert found.tolist() == torch.argsort(tau).tolist()
    taus = {"naive": {}, "expert_wm": {PREFIX: found}}

    shared = D.pair_diagnostics(model, a, b, x, taus, pd.DataFrame(), [], init_states=(a, b))
    assert shared["sim_expert_wm"] == pytest.approx(1.0, abs=1e-9)
    assert shared["sim_expert_wm_at_init"] == pytest.approx(1.0, abs=1e-9)
    assert "sim_naive_at_init" not in shared                         # no order, no matched pairs

    zero_cfg = {**moe_cfg, "expert_init": "zero_out"}
    zero = [insert_moe(copy.deepcopy(dense), zero_cfg, torch.Generator().manual_seed(s)).state_dict() for s in (0, 1)]
    learned = D.pair_diagnostics(model, a, b, x, taus, pd.DataFrame(), [], init_states=tuple(zero))
    assert learned["sim_expert_wm"] == pytest.approx(1.0, abs=1e-9)
    assert learned["sim_expert_wm_at_init"] == 0.0


def variant_recipe(config: dict, variant: str, model: str = "vit") -> dict:
    """What moe.smk gives a variant's jobs: its grid (the variant's restriction, else the model's, else
    the track's), MoE layer options (track-wide, then the variant's) and fine-tuning schedule (the
    model's, then the variant's)."""
    moe, recipe = config["moe"], config["moe"]["variants"][variant]
    grid = {key: recipe.get(key, moe["models"][model].get(key, moe.get(key)))
            for key in ("gatings", "n_experts", "placements")}
    layer = {**{k: moe[k] for k in ("k", "n_shared", "hidden", "activation", "aux_loss_coef")}, **recipe.get("moe", {})}
    return {"grid": grid, "moe": layer, "train": {**moe["models"][model]["train"], **recipe.get("train", {})},
            "runs": model in moe["models"] and model in recipe.get("models", moe["models"])}


@pytest.mark.parametrize("name", ["default", "smoke", "paper"])
def test_every_profile_runs_the_specialised_recipe(name, tmp_path):
    """The effective (merged) profile schedules `specialised` on vit top-k, first layer, with all three
    ingredients (issue 11): k-means routers, zero-initialised expert outputs, and a fine-tuning batch
    larger than the paper recipe's (less gradient noise); and keeps the paper's recipe beside it."""
    from test_profiles import profile

    config = profile(name, tmp_path)
    special, paper = variant_recipe(config, "specialised"), variant_recipe(config, "paper")
    assert special["runs"] and paper["runs"]
    assert special["grid"]["gatings"] == ["topk"] and special["grid"]["placements"] == ["first"]
    assert special["grid"]["n_experts"] and paper["grid"]["gatings"] == config["moe"]["gatings"]
    assert special["moe"]["router_init"] == "kmeans" and special["moe"]["expert_init"] == "zero_out"
    assert special["moe"]["router_scale"] > 1 and special["moe"]["k"] >= 2   # confident routing, top-k proper
    assert special["train"]["batch_size"] > paper["train"]["batch_size"]
    assert {k: v for k, v in special["train"].items() if k != "batch_size"} == \
        {k: v for k, v in paper["train"].items() if k != "batch_size"}         # only the batch differs
    assert config["moe"]["train_backbone"] is False                            # frozen backbone, both recipes
    assert "router_init" not in paper["moe"] and "expert_init" not in paper["moe"]
