"""Mixture-of-Experts layers (MoE-LMC, Tran et al. 2025) and their insertion into timm ViT / HF GPT-2.

An `MoE` holds n one-hidden-layer experts E_i(x) = B_i σ(A_i x + u_i) + v_i as stacked tensors
(moe.md §1 [paper]; stacked layout moe.md §7 [inferred]):

    w1 = A  (n, h, d)    b1 = u  (n, h)    w2 = B  (n, d, h)    b2 = v  (n, d)

so that the expert permutation of G(n) is one `index_select` on axis 0, and a router
`nn.Linear(d, n, bias=True)` (the paper's gate has a bias b_i [paper]). Gating variants:

* ``dense``  — softmax over all n scores (Eq. 2 [paper]).
* ``topk``   — softmax over the k largest scores only (Eq. 3 [paper]); torch.topk's tie order is
  unspecified, which only matters off Ω (moe.md §7).
* ``shared`` — DeepSeekMoE: k routed experts plus s always-on shared experts, added with weight 1.
  The paper's App. D.3 formula is unknown here; ``normalise`` picks the routed weights:
  "all" = softmax over all routed scores, taken at the top-k, no renormalisation (DeepSeek-V2
  [inferred], the default for ``shared``), or "selected" = softmax over the selected scores as in
  Eq. 3. Either way the G(n) symmetries hold for the routed experts (moe.md §1 [inferred]).

Dispatch has no Python loop over tokens. ``batched`` evaluates every expert on every token with one
einsum over the stacked weights and mixes with the (sparse) gate matrix — exact and simplest, n/k
times the FLOPs of a sparse layer. ``grouped`` (default for top-k) sorts the (token, slot)
assignments by expert, scatters them into an (n, capacity, d) buffer (capacity = the largest
expert load, so no token is dropped), runs the experts as one batched einsum and index-adds the
weighted results back. Both are checked against a per-token reference in tests/test_moe.py.

Initialisation: nn.Linear's U(±1/√fan_in) for every tensor (the paper's "randomly initialised"
MoE [secondary]). Two options beyond the paper [inferred], for runs where experts should specialise
at CPU scale: ``router_scale`` multiplies the router's initial weights (a confident router from the
start; routing entropy falls), and ``expert_init="zero_out"`` starts every expert's output layer
(B_i, v_i) at zero, so the function an expert computes is what fine-tuning taught it rather than
its random initialisation (zero-initialised residual branches, as in Goyal et al. 2017 / ReZero).
``expert_init="upcycle"`` starts every expert at the replaced dense FFN plus ``init_noise`` × its random
initialisation (sparse upcycling). ``router_init="kmeans"`` marks a router that `lmcbench.moe.router_init` sets from data (k-means
centroids of the layer's inputs, logit gap ≈ router_scale); here it starts like "uniform".

The optional load-balancing loss is Switch-Transformer style, n · Σ_i f_i P_i (f_i: fraction of
routed slots sent to i, P_i: mean router probability) [inferred: the paper does not mention one];
it is stored in ``aux_loss`` after each forward and added to the task loss by `AuxLossTask`.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GATINGS = ("dense", "topk", "shared")
EXPERT_INITS = ("uniform", "zero_out", "upcycle")
ROUTER_INITS = ("uniform", "kmeans")
ACTIVATIONS = {"gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


def _uniform(shape, fan_in: int, generator: torch.Generator | None) -> Tensor:
    """nn.Linear's default initialisation U(−1/√fan_in, 1/√fan_in), drawn from `generator`."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class MoE(nn.Module):
    """n stacked one-hidden-layer experts, a biased linear router, dense / top-k / shared gating."""

    def __init__(self, d: int, hidden: int, n_experts: int, gating: str = "dense", k: int = 2, n_shared: int = 0,
                 activation: str = "gelu", normalise: str | None = None, dispatch: str = "auto",
                 aux_loss_coef: float = 0.0, router_scale: float = 1.0, expert_init: str = "uniform",
                 router_init: str = "uniform", generator: torch.Generator | None = None):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"unknown gating {gating!r}; expected one of {GATINGS}")
        if gating != "dense" and not 1 <= k <= n_experts:
            raise ValueError(f"top-k gating needs 1 <= k <= n_experts, got k={k}, n_experts={n_experts}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.d, self.hidden, self.n_experts, self.gating = d, hidden, n_experts, gating
        self.k = n_experts if gating == "dense" else k
        self.n_shared = n_shared if gating == "shared" else 0
        self.activation = activation
        self.normalise = normalise or ("all" if gating == "shared" else "selected")
        if self.normalise not in ("all", "selected"):
            raise ValueError(f"normalise must be 'all' or 'selected', got {self.normalise!r}")
        self.dispatch = dispatch if dispatch != "auto" else ("batched" if gating == "dense" else "grouped")
        if self.dispatch not in ("batched", "grouped"):
            raise ValueError(f"unknown dispatch {dispatch!r}; expected auto, batched or grouped")
        if expert_init not in EXPERT_INITS:
            raise ValueError(f"unknown expert_init {expert_init!r}; expected one of {EXPERT_INITS}")
        if router_init not in ROUTER_INITS:
            raise ValueError(f"unknown router_init {router_init!r}; expected one of {ROUTER_INITS}")
        self.aux_loss_coef, self.router_scale, self.expert_init = aux_loss_coef, router_scale, expert_init
        self.router_init = router_init   # "kmeans" is applied from data by lmcbench.moe.router_init
        self.router = nn.Linear(d, n_experts, bias=True)
        g = generator
        with torch.no_grad():
            self.router.weight.copy_(router_scale * _uniform((n_experts, d), d, g))
            self.router.bias.copy_(router_scale * _uniform((n_experts,), d, g))
        self.w1 = nn.Parameter(_uniform((n_experts, hidden, d), d, g))
        self.b1 = nn.Parameter(_uniform((n_experts, hidden), d, g))
        out_scale = 0.0 if expert_init == "zero_out" else 1.0   # "upcycle" is applied by insert_moe
        self.w2 = nn.Parameter(out_scale * _uniform((n_experts, d, hidden), hidden, g))
        self.b2 = nn.Parameter(out_scale * _uniform((n_experts, d), hidden, g))
        if self.n_shared:
            s = self.n_shared
            self.shared_w1 = nn.Parameter(_uniform((s, hidden, d), d, g))
            self.shared_b1 = nn.Parameter(_uniform((s, hidden), d, g))
            self.shared_w2 = nn.Parameter(_uniform((s, d, hidden), hidden, g))
            self.shared_b2 = nn.Parameter(_uniform((s, d), hidden, g))
        self.aux_loss: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"d={self.d}, hidden={self.hidden}, n_experts={self.n_experts}, gating={self.gating}, k={self.k}, "
                f"n_shared={self.n_shared}, activation={self.activation}, dispatch={self.dispatch}")

    def config(self) -> dict:
        """The constructor arguments (without the generator) that rebuild this layer's shapes."""
        return {"d": self.d, "hidden": self.hidden, "n_experts": self.n_experts, "gating": self.gating,
                "k": self.k, "n_shared": self.n_shared, "activation": self.activation,
                "normalise": self.normalise, "dispatch": self.dispatch, "aux_loss_coef": self.aux_loss_coef,
                "router_scale": self.router_scale, "expert_init": self.expert_init, "router_init": self.router_init}

    # ------------------------------------------------------------------ gating
    def gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(scores (T, n), weights (T, k), expert indices (T, k)) for tokens x (T, d)."""
        scores = self.router(x)
        if self.gating == "dense":
            idx = torch.arange(self.n_experts, device=x.device).expand(x.shape[0], -1)
            return scores, scores.softmax(-1), idx
        top, idx = scores.topk(self.k, dim=-1)
        if self.normalise == "selected":
            weights = top.softmax(-1)                                # Eq. 3: softmax over the selected
        else:
            weights = scores.softmax(-1).gather(-1, idx)             # DeepSeek-V2 style, no renormalisation
        return scores, weights, idx

    def _experts_all(self, x: Tensor) -> Tensor:
        """Every expert on every token: (T, n, d)."""
        act = ACTIVATIONS[self.activation]
        h = act(torch.einsum("td,nhd->tnh", x, self.w1) + self.b1)
        return torch.einsum("tnh,ndh->tnd", h, self.w2) + self.b2

    def _shared(self, x: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        h = act(torch.einsum("td,shd->tsh", x, self.shared_w1) + self.shared_b1)
        return (torch.einsum("tsh,sdh->tsd", h, self.shared_w2) + self.shared_b2).sum(1)

    def _grouped(self, x: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        """Sparse dispatch: (token, slot) pairs sorted by expert into an (n, capacity, d) buffer."""
        t, k = idx.shape
        n = self.n_experts
        expert = idx.reshape(-1)
        token = torch.arange(t, device=x.device).repeat_interleave(k)
        order = torch.argsort(expert, stable=True)
        expert, token, w = expert[order], token[order], weights.reshape(-1)[order]
        counts = torch.bincount(expert, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(expert.numel(), device=x.device) - starts[expert]
        capacity = int(counts.max()) if expert.numel() else 0
        buf = x.new_zeros(n, capacity, x.shape[-1])
        buf[expert, slot] = x[token]
        act = ACTIVATIONS[self.activation]
        h = act(torch.einsum("ncd,nhd->nch", buf, self.w1) + self.b1[:, None])
        y = torch.einsum("nch,ndh->ncd", h, self.w2) + self.b2[:, None]
        return x.new_zeros(t, x.shape[-1]).index_add_(0, token, (y[expert, slot] * w[:, None]).to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        scores, weights, idx = self.gates(x)
        if self.dispatch == "batched":
            mix = weights.new_zeros(scores.shape).scatter(-1, idx, weights)   # (T, n), zeros off the top-k
            out = torch.einsum("tn,tnd->td", mix, self._experts_all(x))
        else:
            out = self._grouped(x, weights, idx)
        if self.n_shared:
            out = out + self._shared(x)
        out = out.to(x.dtype)
        if self.training and self.aux_loss_coef:
            probs = scores.softmax(-1)
            load = torch.bincount(idx.reshape(-1), minlength=self.n_experts).to(probs.dtype) / idx.numel()
            self.aux_loss = self.aux_loss_coef * self.n_experts * (load * probs.mean(0)).sum()
        else:
            self.aux_loss = None
        return out.reshape(shape)


def reference_forward(moe: MoE, x: Tensor) -> Tensor:
    """A slow per-token, per-expert reference of `MoE.forward` (for tests): Python loops everywhere."""
    act = ACTIVATIONS[moe.activation]
    flat = x.reshape(-1, x.shape[-1])
    out = []
    for token in flat:
        scores = moe.router.weight @ token + moe.router.bias
        if moe.gating == "dense":
            chosen, w = list(range(moe.n_experts)), scores.softmax(0)
        else:
            chosen = scores.topk(moe.k).indices.tolist()
            w_sel = scores[chosen].softmax(0) if moe.normalise == "selected" else scores.softmax(0)[chosen]
            w = torch.zeros_like(scores)
            w[chosen] = w_sel
        y = torch.zeros_like(token)
        for i in chosen:
            y = y + w[i] * (moe.w2[i] @ act(moe.w1[i] @ token + moe.b1[i]) + moe.b2[i])
        for s in range(moe.n_shared):
            y = y + moe.shared_w2[s] @ act(moe.shared_w1[s] @ token + moe.shared_b1[s]) + moe.shared_b2[s]
        out.append(y)
    return torch.stack(out).reshape(x.shape)


# ---------------------------------------------------------------------------------------------- insertion
def ffn_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, blocks) of the transformer blocks whose `.mlp` is the FFN: timm `blocks`, HF `transformer.h`."""
    if hasattr(model, "blocks") and isinstance(model.blocks, nn.Sequential | nn.ModuleList):
        return "blocks", model.blocks
    if hasattr(model, "transformer") and hasattr(model.transformer, "h"):
        return "transformer.h", model.transformer.h
    raise NotImplementedError(f"insert_moe supports timm VisionTransformer and HF GPT-2, not {type(model).__name__}")


def placement_layers(placement, depth: int) -> list[int]:
    """Block indices for a placement: "first", "last", "all", or an explicit list of indices."""
    if placement == "first":
        return [0]
    if placement == "last":
        return [depth - 1]
    if placement == "all":
        return list(range(depth))
    layers = sorted({int(i) % depth for i in placement}) if isinstance(placement, list | tuple) else None
    if not layers:
        raise ValueError(f"placement must be first, last, all or a non-empty list of layer indices, got {placement!r}")
    return layers


def _ffn_shape(mlp: nn.Module) -> tuple[int, int]:
    """(d, hidden) of the FFN being replaced (timm Mlp fc1 is nn.Linear, GPT-2 c_fc is Conv1D (d, h))."""
    if hasattr(mlp, "fc1"):
        return mlp.fc1.in_features, mlp.fc1.out_features
    if hasattr(mlp, "c_fc"):
        return mlp.c_fc.weight.shape
    if isinstance(mlp, MoE):
        return mlp.d, mlp.hidden
    raise NotImplementedError(f"cannot read the FFN shape of {type(mlp).__name__}")


MOE_KEYS = ("n_experts", "gating", "k", "n_shared", "hidden", "activation", "normalise", "dispatch",
            "aux_loss_coef", "router_scale", "expert_init", "init_noise", "router_init", "placement")


# MoE layer options the default profile's `moe` block does not set (it sets k, n_shared, hidden, activation,
# aux_loss_coef; variants set the rest): their one place. `moe_layer_defaults` adds the profile's.
LAYER_DEFAULTS = {"gating": "dense", "placement": "first", "normalise": None, "dispatch": "auto",
                  "router_scale": 1.0, "expert_init": "uniform", "init_noise": 1.0, "router_init": "uniform"}


def moe_layer_defaults() -> dict:
    """The MoE layer options a config or checkpoint leaves out: LAYER_DEFAULTS and the default profile's `moe` block."""
    from lmcbench.config import load_default_profile

    profile = load_default_profile()["moe"]
    return {**LAYER_DEFAULTS, **{k: profile[k] for k in MOE_KEYS if k in profile and k != "n_experts"}}


def insert_moe(model: nn.Module, moe_cfg: dict, generator: torch.Generator | None = None) -> nn.Module:
    """Replace the FFN (`blocks[i].mlp` / `transformer.h[i].mlp`) of the chosen layers by freshly
    initialised MoE layers, in place; returns the model. moe_cfg keys: n_experts, gating, k,
    n_shared, hidden (default: the replaced FFN's width), activation, normalise, dispatch,
    aux_loss_coef, router_scale, expert_init, init_noise, router_init, placement (first / last / all /
    list). Layers are initialised in block order from `generator`, so the same generator state gives
    the same MoE."""
    unknown = set(moe_cfg) - set(MOE_KEYS)
    if unknown:
        raise ValueError(f"unknown MoE options {sorted(unknown)}; known: {list(MOE_KEYS)}")
    moe_cfg = {**moe_layer_defaults(), **moe_cfg}
    _, blocks = ffn_blocks(model)
    ref = next(model.parameters())
    for i in placement_layers(moe_cfg["placement"], len(blocks)):
        d, hidden = _ffn_shape(blocks[i].mlp)
        layer = MoE(d, moe_cfg["hidden"] or hidden, moe_cfg["n_experts"], moe_cfg["gating"],
                    moe_cfg["k"], moe_cfg["n_shared"], moe_cfg["activation"],
                    moe_cfg["normalise"], moe_cfg["dispatch"], moe_cfg["aux_loss_coef"],
                    moe_cfg["router_scale"], moe_cfg["expert_init"],
                    moe_cfg["router_init"], generator)
        if layer.expert_init == "upcycle":
            upcycle(layer, blocks[i].mlp, moe_cfg["init_noise"])
        blocks[i].mlp = layer.to(device=ref.device, dtype=ref.dtype)
    return model


def ffn_weights(mlp: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(A (h, d), u (h), B (d, h), v (d)) of a timm Mlp (fc1/fc2) or an HF GPT-2 MLP (Conv1D c_fc/c_proj)."""
    if hasattr(mlp, "fc1"):
        return mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    if hasattr(mlp, "c_fc"):
        return mlp.c_fc.weight.T, mlp.c_fc.bias, mlp.c_proj.weight.T, mlp.c_proj.bias
    raise NotImplementedError(f"cannot read the FFN weights of {type(mlp).__name__}")


@torch.no_grad()
def upcycle(layer: MoE, mlp: nn.Module, noise: float) -> MoE:
    """Sparse upcycling (Komatsuzaki et al. 2023) with noise: every expert = the replaced dense FFN plus
    `noise` × its own random initialisation (the layer's current, seed-drawn expert tensors)."""
    dense = ffn_weights(mlp)
    if dense[0].shape != layer.w1.shape[1:]:
        raise ValueError(f"expert_init 'upcycle' needs experts as wide as the FFN ({dense[0].shape[0]}), "
                         f"got hidden={layer.hidden}; set moe hidden: null")
    for tensor, weight in zip((layer.w1, layer.b1, layer.w2, layer.b2), dense):
        tensor.mul_(noise).add_(weight.to(tensor.dtype))
    return layer


def moe_modules(model: nn.Module) -> dict[str, MoE]:
    """Dotted path -> MoE layer, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MoE)}


def freeze_backbone(model: nn.Module, train_backbone: bool = False) -> nn.Module:
    """requires_grad only on MoE parameters (the paper's protocol [secondary]); everything with train_backbone."""
    moe_params = {id(p) for m in moe_modules(model).values() for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(train_backbone or id(p) in moe_params)
    return model


def aux_loss(model: nn.Module) -> Tensor | None:
    losses = [m.aux_loss for m in moe_modules(model).values() if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


class AuxLossTask:
    """Wraps a `Task` so that training adds the MoE load-balancing loss: score() returns the summed
    loss plus count × aux (training divides by the count). Evaluation (model.eval()) is unchanged."""

    def __init__(self, task):
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def score(self, model, inputs, targets):
        loss, correct, count = self.task.score(model, inputs, targets)
        extra = aux_loss(model) if model.training else None
        return (loss + extra * count if extra is not None else loss), correct, count


def with_moe(model: nn.Module, moe_cfg: dict, seed: int = 0) -> nn.Module:
    """A deep copy of `model` with MoE layers inserted from a generator seeded with `seed`."""
    return insert_moe(copy.deepcopy(model), moe_cfg, torch.Generator().manual_seed(seed))
