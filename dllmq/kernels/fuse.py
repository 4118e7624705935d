"""`fuse_projections(model)`: one GEMM for the linears that read the same input.

q, k and v read one normed input, and so do the FFN's gate and up. A deploy-time transform
concatenates each group's weights (and biases) along the output dimension into one
`FusedLinear`, so a block runs five GEMMs instead of seven: fewer, larger GEMMs (at Dream-7B's
shapes the k and v projections are 512 wide, where cuBLAS runs below its peak). The block's
forward (dllmq.models.model) takes `qkv_proj` / `gate_up_proj` where a block has them.

The fused GEMM computes every output element as the separate GEMMs do, a dot product over the
same K inputs; only the BLAS kernel choice, and with it the summation order, may differ, so the
outputs agree to float rounding (tests/test_kernels_fuse.py bounds it). Plain nn.Linears only
(a bf16 / float model, before `compile_blocks`): a realized or fake-quant linear carries its own
scales and transforms, and the ArchSpec paths (`q_proj`, ...) that quantizers and `realize`
walk no longer exist afterwards, so fusing comes last, after any quantization.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from dllmq.models import get_module

log = logging.getLogger(__name__)

# (fused name, linear kinds in output order); the fused module sits where the first one was
GROUPS = (("qkv_proj", ("q", "k", "v")), ("gate_up_proj", ("gate", "up")))


class FusedLinear(nn.Module):
    """Linears reading the same input, concatenated along out_features: one GEMM, its output
    split back into the parts (views of the one result, in the order given)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        if len({(m.in_features, m.weight.dtype, m.weight.device, m.bias is None) for m in linears}) != 1:
            raise ValueError("fused linears need the same input size, dtype, device, and all or "
                             "none with a bias")
        self.in_features = linears[0].in_features
        self.sizes = tuple(m.out_features for m in linears)
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]),
                                   requires_grad=False)
        self.bias = None if linears[0].bias is None else nn.Parameter(
            torch.cat([m.bias.detach() for m in linears]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {' + '.join(map(str, self.sizes))}"


def _parent(block: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return (get_module(block, head) if head else block), name


@torch.no_grad()
def fuse_projections(model: nn.Module) -> nn.Module:
    """Concatenate q/k/v and gate/up of every block into one FusedLinear each, in place (the
    separate weights are freed); returns model. Refuses a block whose linears are not all plain
    nn.Linear (quantized or realized), before changing anything."""
    spec = model.spec
    plan = []
    for i, block in enumerate(model.blocks):  # check every block first: no half-fused model
        for fused_name, kinds in GROUPS:
            paths = [spec.linear_name(k) for k in kinds]
            parent, _ = _parent(block, paths[0])
            if hasattr(parent, fused_name):
                raise ValueError(f"{spec.blocks}.{i} is already fused ({fused_name}); fuse once")
            mods = [get_module(block, p) for p in paths]
            for p, m in zip(paths, mods, strict=True):
                if type(m) is not nn.Linear:
                    raise TypeError(f"{spec.blocks}.{i}.{p} is a {type(m).__name__}; "
                                    "fuse_projections takes plain nn.Linear only (fuse a float "
                                    "model, or skip fusing for a quantized one)")
            if any(_parent(block, p)[0] is not parent for p in paths):
                raise ValueError(f"{spec.blocks}.{i}: {', '.join(paths)} do not share a parent")
            plan.append((parent, fused_name, paths, mods))
    for parent, fused_name, paths, mods in plan:
        setattr(parent, fused_name, FusedLinear(mods))
        for p in paths:
            delattr(parent, p.rpartition(".")[2])
    log.info("fuse_projections: %d blocks, q/k/v and gate/up each one GEMM", len(model.blocks))
    return model
