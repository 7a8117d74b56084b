# Shared helpers: sweep enumeration, per-rule resources, config cross-checks the schema cannot express.
from itertools import combinations

SEEDS = sorted(config["seeds"])
SEED_PAIRS = list(combinations(SEEDS, 2))
RESULTS = "results"

# Job order when cores are scarce (snakemake starts the ready job of highest priority): the ACE image job, the
# longest (~12 min of the default profile's ~51 min of jobs), and N-body at once; then training, which every
# GLMC and MoE job waits on; then GLMC, the width-heterogeneous and GPT-2 learned-matching jobs (~3 min each)
# first; MoE last, its jobs being shorter. Measured in the default run on 2 cores: with MoE jobs interleaved
# between the trainings, the width-heterogeneous learned job started last and ran alone for its final 2.3 min;
# in this order both lanes stayed busy until the last 0.9 min.
PRIORITY = {"ace": 100, "train": 90, "glmc_width_hetero": 60, "glmc_pairwise": 50, "glmc_multi_model": 40, "moe": 30}


wildcard_constraints:
    model="[A-Za-z0-9_]+",
    method="[A-Za-z0-9_]+",
    seed=r"\d+",
    seed_a=r"\d+",
    seed_b=r"\d+",


def _require_model(name, where):
    if name not in config["models"]:
        raise ValueError(f"config error: {where} = {name!r} is not a key of `models` (known: {sorted(config['models'])})")


def model_seeds(model):
    return sorted(config["models"][model].get("seeds", SEEDS))


def checkpoint(model, seed):
    return f"{RESULTS}/models/{model}/seed{seed}/model.safetensors"


def barrier_cfg(model):
    """The top-level `barrier` block with the model's own overrides."""
    return {**config["barrier"], **config["models"][model].get("barrier", {})}


def dataset_cfg(model):
    return config["datasets"][config["models"][model]["dataset"]]


def resource(key, model=None):
    """A resource for a rule: the model's override, else the profile's `resources` (defaults: lmcbench/profiles/default.yaml)."""
    own = config["models"][model].get("resources", {}) if model else {}
    return own.get(key, config["resources"][key])


def model_resource(key):
    return lambda wildcards: resource(key, wildcards.model)
