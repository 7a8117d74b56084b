"""The paper profile as the workflow sees it (merged over default.yaml, checked), and its text pipeline.

A profile is merged over default.yaml (Snakemake's --configfile), so a key the profile leaves out
inherits the CPU default: these tests read the EFFECTIVE config, the way the GLMC rules read it
(`barrier_cfg` and `matcher_cfg` in workflow/rules/common.smk and glmc.smk), never the file alone.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from lmcbench.cli import main
from lmcbench.config import PROFILES, load_profile
from lmcbench.matchers import OPTIONS, parse_options
from lmcbench.matchers.universe import MultiModelOptions

# GLMC's official learned-matching schedule [official code `run_merger.sh`, `train_merger.py`; glmc.md §3.3]
OFFICIAL = {"lr": 3e-4, "weight_decay": 0.01, "warmup_frac": 0.05, "batch_size": 32, "epochs": 10,
            "eval_every": 50, "patience": 10}


def with_data_roots(name: str, tmp_path) -> Path:
    """The profile with its dataset roots pointed at empty stand-ins under tmp_path (the real data is
    not in the repository; `check_config` requires the roots to exist), as a user would pass them."""
    config = yaml.safe_load((PROFILES / f"{name}.yaml").read_text())
    for key, dataset in config.get("datasets", {}).items():
        if dataset.get("root"):
            root = tmp_path / key / Path(dataset["root"]).name
            (root.mkdir(parents=True) if not root.suffix else (root.parent.mkdir(parents=True), root.touch()))
            dataset["root"] = str(root)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def profile(name: str, tmp_path) -> dict:
    """The effective config: the profile merged over default.yaml and checked, as the workflow gets it."""
    return load_profile(with_data_roots(name, tmp_path))


def barrier_cfg(config: dict, model: str) -> dict:
    """common.smk `barrier_cfg`: the top-level block with the model's own overrides."""
    return {**config["barrier"], **config["models"][model].get("barrier", {})}


def matcher_cfg(config: dict, matchers: dict, model: str, method: str) -> dict:
    """glmc.smk `matcher_cfg`: the experiment's block, then the model's `matchers.<method>` overrides."""
    return {**matchers.get(method, {}), **config["models"][model].get("matchers", {}).get(method, {})}


def glmc_problems(config: dict) -> list[str]:
    """Every place the effective config departs from the papers' GLMC settings."""
    glmc, problems = config["glmc"], []
    pairwise = glmc.get("models") or list(config["models"])
    hetero = glmc.get("width_hetero", {})
    multi = glmc.get("multi_model", {})
    models = set(pairwise) | {m for p in hetero.get("pairs", []) for m in (p["wide"], p["narrow"])}
    for model in sorted(models):
        if barrier_cfg(config, model).get("max_examples") is not None:
            problems.append(f"barrier of {model}: max_examples {barrier_cfg(config, model)['max_examples']}")
    if multi.get("models") and multi.get("max_examples") is not None:
        problems.append(f"multi_model max_examples {multi['max_examples']}")
    runs = [(f"glmc.matchers.{method} for {model}", method, matcher_cfg(config, glmc.get("matchers", {}), model, method))
            for model in pairwise for method in glmc["methods"] if method.startswith("learned")]
    runs += [(f"glmc.width_hetero.matchers.{method} for {p['wide']}", method,
              matcher_cfg(config, hetero.get("matchers", glmc.get("matchers", {})), p["wide"], method))
             for p in hetero.get("pairs", []) for method in hetero.get("methods", []) if method.startswith("learned")]
    checked = [(where, parse_options(OPTIONS[method], given, where)) for where, method, given in runs]
    if multi.get("models") and "learned_full" in multi.get("methods", []):
        checked.append(("glmc.multi_model.matcher", parse_options(MultiModelOptions, multi.get("matcher"), "multi")))
    for where, options in checked:
        for key, value in OFFICIAL.items():
            if getattr(options, key) != pytest.approx(value):
                problems.append(f"{where}: {key} = {getattr(options, key)}, official {value}")
    return problems


def test_effective_paper_profile_has_the_papers_glmc_settings(tmp_path):
    config = profile("paper", tmp_path)
    assert glmc_problems(config) == []
    assert {"learned_full", "learned_perm_only", "learned_identity_init"} <= set(config["glmc"]["methods"])
    assert config["datasets"]["text"]["tokenizer"] == "gpt2"
    assert config["models"]["gpt2"]["arch"]["n_positions"] == 256   # 32 × 256-token blocks


def test_default_profile_is_caught_by_the_same_checks(tmp_path):
    """Negative control: the CPU profile (32 GPT-2 test blocks, 150-step learned matching) fails them."""
    problems = glmc_problems(profile("default", tmp_path))
    assert any(p.startswith("barrier of gpt2: max_examples") for p in problems), problems
    assert any("lr = 0.001" in p for p in problems), problems


def test_config_command_prints_the_effective_paper_config(tmp_path, capsys):
    assert main(["config", "--profile", str(with_data_roots("paper", tmp_path)), "--key", "models.gpt2.barrier"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"max_examples": None, "batch_size": 32}


# --------------------------------------------------------------------------------------------- text
SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak."
# GPT-2's published BPE ids of the first line of Tiny Shakespeare (as nanoGPT's prepare.py prints them)
SAMPLE_IDS = [5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13]


def test_gpt2_tokenizer_is_gpt2s_own_bpe_offline():
    from lmcbench.data.text import GPT2Tokenizer

    tok = GPT2Tokenizer()
    assert tok.vocab_size == 50257
    assert tok.encode(SAMPLE) == SAMPLE_IDS
    assert tok.decode(SAMPLE_IDS) == SAMPLE
    assert tok.encode_tensor(SAMPLE).tolist() == SAMPLE_IDS


def test_text_dataset_with_the_gpt2_tokenizer(tmp_path):
    from lmcbench.data import load_dataset

    text = (SAMPLE + "\n") * 200
    (tmp_path / "corpus.txt").write_text(text)
    data = load_dataset({"name": "text_file", "root": str(tmp_path / "corpus.txt"), "tokenizer": "gpt2",
                         "val_frac": 0.05, "test_frac": 0.05})
    tok = data.meta["tokenizer"]
    assert data.meta["vocab_size"] == 50257
    assert int(data.train.max()) < 50257
    # the splits are contiguous character ranges, each encoded on its own: decoding them gives the text back
    assert "".join(tok.decode(split.tolist()) for split in (data.train, data.val, data.test)) == text
