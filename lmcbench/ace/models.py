"""Backbones for the ACE track: an escnn steerable CNN (C_N / D_N) with mixed convolutions, a
relaxed group CNN for C4 (Wang et al. 2022, plain torch) and an EGNN (Satorras et al. 2021, plain torch)
with mixed node/coordinate updates. escnn is imported inside `SteerableCNN.__init__` only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmcbench.ace.layers import MixedLayer


# --------------------------------------------------------------------------- escnn steerable CNN
class SteerableCNN(nn.Module):
    """Conv blocks [R2Conv (+ γ·Conv2d on the raw tensor) → InnerBatchNorm → ReLU → avg-pool] on
    29×29 inputs, then group pooling, spatial mean and a linear head: invariant logits.

    group: "C" (rot2dOnR2(N)) or "D" (flipRot2dOnR2(N)). With `mixed`, every conv is a MixedLayer whose
    branch is a plain nn.Conv2d from the input field's channels to the output field's channels.
    """

    def __init__(self, group: str = "C", N: int = 4, channels=(4, 8, 8), kernel_size: int = 5,
                 mixed: bool = True, num_classes: int = 10, gamma_init: float = 1.0):
        super().__init__()
        from escnn import gspaces
        from escnn import nn as enn

        self.gspace = gspaces.rot2dOnR2(N) if group == "C" else gspaces.flipRot2dOnR2(N)
        self.in_type = enn.FieldType(self.gspace, [self.gspace.trivial_repr])
        blocks, t_in = [], self.in_type
        for i, c in enumerate(channels):
            t_out = enn.FieldType(self.gspace, c * [self.gspace.regular_repr])
            conv = enn.R2Conv(t_in, t_out, kernel_size, padding=kernel_size // 2)
            neq = nn.Conv2d(t_in.size, t_out.size, kernel_size, padding=kernel_size // 2) if mixed else None
            layers = [MixedLayer(conv, neq, gamma_init), enn.InnerBatchNorm(t_out), enn.ReLU(t_out)]
            if i < len(channels) - 1:
                layers.append(enn.PointwiseAvgPool2D(t_out, 3, stride=2, padding=1))
            blocks.append(nn.Sequential(*layers))
            t_in = t_out
        self.blocks = nn.ModuleList(blocks)
        self.gpool = enn.GroupPooling(t_in)
        self.head = nn.Linear(self.gpool.out_type.size, num_classes)
        self._enn = enn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self._enn.GeometricTensor(x, self.in_type)
        for block in self.blocks:
            z = block(z)
        return self.head(self.gpool(z).tensor.mean((-2, -1)))


# --------------------------------------------------------------------------- relaxed group conv
class _RelaxedConv(nn.Module):
    """Relaxed C4 (lifting or group) convolution: the kernel for output rotation r is
    rot90_r(roll_r(Σ_l w[r,l] Ψ_l)); equal w rows give exact C4 equivariance (Wang et al. 2022)."""

    def __init__(self, c_in: int, c_out: int, k: int, n_bases: int = 2, lifting: bool = False):
        super().__init__()
        self.lifting, self.k = lifting, k
        shape = (n_bases, c_out, c_in, k, k) if lifting else (n_bases, c_out, c_in, 4, k, k)
        fan_in = c_in * k * k * (1 if lifting else 4)
        self.bases = nn.Parameter(torch.randn(shape) / fan_in ** 0.5)
        self.w = nn.Parameter(torch.ones(4, n_bases) / n_bases)
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x):   # lifting: [B, C, H, W]; group: [B, C, 4, H, W] → [B, C_out, 4, H, W]
        kernels = []
        for r in range(4):
            base = torch.einsum("l,l...->...", self.w[r], self.bases)
            if not self.lifting:
                base = torch.roll(base, shifts=r, dims=2)
            kernels.append(torch.rot90(base, r, dims=(-2, -1)))
        kern = torch.stack(kernels, 1)  # [C_out, 4, C_in(, 4), k, k]
        kern = kern.reshape(kern.shape[0] * 4, -1, self.k, self.k)
        inp = x if self.lifting else x.flatten(1, 2)
        y = F.conv2d(inp, kern, padding=self.k // 2)
        return y.unflatten(1, (-1, 4)) + self.bias[None, :, None, None, None]

    def regulariser(self) -> torch.Tensor:
        return (self.w - self.w.roll(1, 0)).pow(2).sum()


class RelaxedGroupCNN(nn.Module):
    """C4 relaxed group CNN with the SteerableCNN's block layout (relaxed_conv baseline)."""

    def __init__(self, channels=(4, 8, 8), kernel_size: int = 5, n_bases: int = 2, num_classes: int = 10):
        super().__init__()
        convs, norms, c_in = [], [], 1
        for i, c in enumerate(channels):
            convs.append(_RelaxedConv(c_in, c, kernel_size, n_bases, lifting=(i == 0)))
            norms.append(nn.BatchNorm3d(c))
            c_in = c
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x):
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i < len(self.convs) - 1:
                b, c, g, h, w = x.shape
                x = F.avg_pool2d(x.flatten(1, 2), 3, stride=2, padding=1).unflatten(1, (c, g))
        return self.head(x.amax(2).mean((-2, -1)))

    def regulariser(self) -> torch.Tensor:
        return sum(conv.regulariser() for conv in self.convs)


# --------------------------------------------------------------------------- EGNN
def _mlp(d_in: int, d_hidden: int, d_out: int, act=nn.SiLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), act(), nn.Linear(d_hidden, d_out))


class _NodeUpdate(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.phi_h = _mlp(2 * hidden, hidden, hidden)

    def forward(self, h, agg, raw):
        return h + self.phi_h(torch.cat([h, agg], -1))


class _CoordUpdate(nn.Module):
    def forward(self, x, shift, raw):
        return x + shift


class EGNNLayer(nn.Module):
    """E(n)-equivariant layer with velocity (Satorras et al. 2021, N-body variant), dense over a
    fully connected graph. Mixed: h ← h_eq + γ_h·MLP([h, x, v]), x ← x_eq + γ_x·MLP([h, x, v]) on raw
    coordinates, which breaks rotations and translations (as the EGNO/SchNet branches do [official code])."""

    def __init__(self, hidden: int, edge_dim: int = 1, mixed: bool = True, gamma_init: float = 1.0):
        super().__init__()
        self.phi_e = nn.Sequential(_mlp(2 * hidden + 1 + edge_dim, hidden, hidden), nn.SiLU())
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1, bias=False))
        nn.init.xavier_uniform_(self.phi_x[-1].weight, gain=0.001)
        self.phi_v = _mlp(hidden, hidden, 1)
        raw_dim = hidden + 6
        self.node = MixedLayer(_NodeUpdate(hidden), _mlp(raw_dim, hidden, hidden) if mixed else None, gamma_init,
                               neq_input=lambda h, agg, raw: raw)
        self.coord = MixedLayer(_CoordUpdate(), _mlp(raw_dim, hidden, 3) if mixed else None, gamma_init,
                                neq_input=lambda x, shift, raw: raw)

    def forward(self, h, x, v, edge_attr):
        n = x.shape[1]
        d = x[:, :, None] - x[:, None, :]                          # [B, n, n, 3] x_i − x_j
        r2 = (d ** 2).sum(-1, keepdim=True)
        hi, hj = h[:, :, None].expand(-1, -1, n, -1), h[:, None, :].expand(-1, n, -1, -1)
        m = self.phi_e(torch.cat([hi, hj, r2, edge_attr], -1))
        mask = 1.0 - torch.eye(n, device=x.device)[None, :, :, None]
        m = m * mask
        shift = (d * self.phi_x(m) * mask).sum(2) / (n - 1) + self.phi_v(h) * v
        raw = torch.cat([h, x, v], -1)
        x_new = self.coord(x, shift, raw)
        h_new = self.node(h, m.sum(2), raw)
        return h_new, x_new


class EGNN(nn.Module):
    """Predicts future positions from (x, v, q): h0 = Linear(|v|), edge attr q_i q_j, L EGNN layers."""

    def __init__(self, hidden: int = 32, layers: int = 4, mixed: bool = True, gamma_init: float = 1.0):
        super().__init__()
        self.embed = nn.Linear(1, hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden, 1, mixed, gamma_init) for _ in range(layers))

    def forward(self, x, v, q, return_layers: bool = False):
        h = self.embed(v.norm(dim=-1, keepdim=True))
        edge = q[:, :, None] * q[:, None, :]                       # [B, n, n, 1]
        outs = []
        for layer in self.layers:
            h, x = layer(h, x, v, edge)
            outs.append((h, x))
        return (x, outs) if return_layers else x


def build_image_model(cfg: dict, kind: str, num_classes: int = 10) -> nn.Module:
    """The image backbone of `kind` (a method's `model`): "strict", "mixed" or "relaxed"."""
    arch = cfg["arch"]
    if kind == "relaxed":
        return RelaxedGroupCNN(tuple(arch["channels"]), arch["kernel_size"], arch.get("n_bases", 2), num_classes)
    return SteerableCNN(arch.get("group", "C"), arch["N"], tuple(arch["channels"]), arch["kernel_size"],
                        mixed=(kind == "mixed"), num_classes=num_classes)


def build_nbody_model(cfg: dict, kind: str) -> nn.Module:
    """The N-body backbone of `kind` (a method's `model`): "strict" or "mixed"."""
    if kind not in ("strict", "mixed"):
        raise ValueError(f"no {kind!r} N-body backbone (the method's `model`); N-body has strict and mixed")
    arch = cfg["arch"]
    return EGNN(arch["hidden"], arch["layers"], mixed=(kind == "mixed"))
