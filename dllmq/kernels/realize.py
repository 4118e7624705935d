"""`realize(model, backend)`: swap a quantized model's block linears for real low-bit modules.

The study's tables come from the fake-quant path (dllmq.quant: QLinear computes in float what
the integer grid allows). `realize` is the separate execution path: it reads the state that
path left (QLinear codes, scales, zero points, online input transforms; the same state
`save_quantized` writes and `load_quantized` rebuilds) and installs modules that run low-bit
arithmetic. It walks the blocks through the ArchSpec; the LM head and embeddings stay as they
are. Backends:

- "fp8":  W8A8 e4m3 through `torch._scaled_mm` (fp8.Fp8Linear). Every block linear, a plain
  nn.Linear or a QLinear, becomes fp8; a QLinear's online input transform (QuaRot's Hadamard,
  DuQuant's rotations and permutations) runs first, and smoothing/rotations already folded into
  the weights carry over. Its integer activation spec is replaced by fp8; an integer-quantized
  weight would be rounded twice, so realize it from a float or transform-only model
  (e.g. `quantize_(model, (QuaRotConfig(act=None),))`); such a weight is refused.
- "fp8-fake": the fake-quant twin of "fp8" (fp8.FakeFp8Linear): the same e4m3 codes and scales,
  multiplied in float. Accuracy tables compare "fp8" with it item by item.
- "int8": W8A8 int8 through `torch._int_mm` (int8.Int8Linear), for QLinears with 8-bit
  per-channel weights and 8-bit per-token activations (the W8A8 RTN, SmoothQuant, QuaRot,
  DuQuant recipes); computes exactly what the QLinear does, up to float rounding.
- "w4a16": packed int4 weights with a dequantize-GEMM (int4.W4A16Linear), for 4-bit weight-only
  QLinears (the W4A16 RTN/GPTQ/AWQ recipes); only the packed codes stay resident.
Any block linear a backend cannot run raises one line naming it; plain nn.Linears that a
recipe left in float stay float under "int8" and "w4a16" (logged).

`compile_blocks(model)` is the compiled forward: every block goes through `torch.compile`
(regional compilation: the blocks share one compiled graph, so compiling costs one block, not
the whole depth). The samplers and the likelihood take the compiled model as any model.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from dllmq.models import LINEAR_KINDS, get_module, set_module
from dllmq.quant.qlinear import QLinear

from .fp8 import FakeFp8Linear, Fp8Linear
from .int4 import W4A16Linear
from .int8 import Int8Linear

log = logging.getLogger(__name__)

BACKENDS = ("fp8", "fp8-fake", "int8", "w4a16")
REAL_MODULES = (Fp8Linear, FakeFp8Linear, Int8Linear, W4A16Linear)


def _fp8(cls: type, mod: nn.Module, name: str) -> nn.Module:
    if isinstance(mod, QLinear):
        if mod.weight_spec is not None:
            raise ValueError(f"{name}: fp8 would round its {mod.weight_spec.describe()} weight a "
                             "second time; realize fp8 from a float or transform-only model "
                             "(e.g. quantize_(model, (QuaRotConfig(act=None),)))")
        return cls(mod.weight, mod.bias, mod.input_transform)
    return cls(mod.weight, mod.bias)


def _convert(backend: str, mod: nn.Module, name: str, w4a16_mode: str) -> nn.Module | None:
    if isinstance(mod, REAL_MODULES):
        raise ValueError(f"{name} is already realized ({type(mod).__name__}); realize a model once")
    if not isinstance(mod, nn.Linear | QLinear):
        raise TypeError(f"{name} is a {type(mod).__name__}, expected nn.Linear or QLinear")
    if backend == "fp8":
        return _fp8(Fp8Linear, mod, name)
    if backend == "fp8-fake":
        return _fp8(FakeFp8Linear, mod, name)
    if not isinstance(mod, QLinear):
        return None  # a linear the recipe left in float stays float
    if backend == "int8":
        return Int8Linear(mod, name)
    return W4A16Linear(mod, name, mode=w4a16_mode)


@torch.no_grad()
def realize(model: nn.Module, backend: str, *, w4a16_mode: str = "dequant") -> nn.Module:
    """Swap every block linear of `model` for `backend`'s real module, in place; returns model.

    w4a16_mode: "dequant" (unpack each layer's codes to a 16-bit weight when it runs, then
    cuBLAS / CPU BLAS; under torch.compile the unpacking is one fused kernel) or "triton" (the
    fused dequantize-GEMM kernel, CUDA only). On an H200 "dequant" was the faster of the two
    (tables/bench_kernels.md, LLaDA step at batch 8: 1.06x of bf16-compiled, Triton 2.4x)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} unknown; use one of {BACKENDS}")
    plan = []
    for i, block in enumerate(model.blocks):  # convert all first, swap after: no half-realized model
        for kind in LINEAR_KINDS:
            path = model.spec.linear_name(kind)
            name = f"{model.spec.blocks}.{i}.{path}"
            new = _convert(backend, get_module(block, path), name, w4a16_mode)
            if new is not None:
                plan.append((block, path, new))
            else:
                log.info("realize %s: %s stays float (the recipe did not quantize it)", backend, name)
    for block, path, new in plan:
        set_module(block, path, new)
    log.info("realize %s: %d block linears", backend, len(plan))
    return model


def compile_blocks(model: nn.Module, *, mode: str | None = None, dynamic: bool | None = False,
                   backend: str = "inductor") -> nn.Module:
    """torch.compile every block in place (regional compilation); returns model.

    mode: torch.compile's mode (None: default; "max-autotune-no-cudagraphs" tunes GEMM tiles;
    "reduce-overhead" adds CUDA graphs, for static shapes). dynamic=False specializes on each
    (batch, length), which the samplers keep fixed within a generation. backend: torch.compile's
    ("eager" traces without generating code: the CPU tests use it)."""
    for block in model.blocks:
        block.compile(mode=mode, dynamic=dynamic, backend=backend)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, shared tensors (tied embeddings) counted once."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
