"""`realize(model, backend)`: swap a quantized model's block linears for real low-bit modules.

The study's tables come from the fake-quant path (dllmq.quant: QLinear computes in float what
the integer grid allows). `realize` is the separate execution path: it reads the state that
path left (QLinear codes, scales, zero points, online input transforms; the same state
`save_quantized` writes and `load_quantized` rebuilds) and installs modules that run low-bit
arithmetic. It walks the blocks through the ArchSpec; the LM head and embeddings stay as they
are, except under "w4a16" with head="int4" (below). Backends:

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
  With head="int4" the two vocab-sized matrices take the same packed format: the LM head
  becomes a W4A16Linear and the input embedding an int4.Int4Embedding (a gather of the packed
  rows of the looked-up tokens, dequantized row by row). Their codes: a head the recipe already
  quantized to 4 bits (RTNConfig(lm_head=True); `save_quantized` exports it, `load_quantized`
  reads it back) is used as it is; a float head, and the embedding (which no recipe quantizes),
  get RTN under int4.VOCAB_SPEC (asymmetric, groups of 128, the w4a16g128 recipes' spec) here.
  The trade-off: LLaDA-8B's weights shrink from 5.4 to 4.0 GiB (0.36x -> 0.27x of bf16), at the
  accuracy cost of RTN-quantizing the logits' matrix (tables/deploy_int4_head.md measures it on
  the tiny models); the default head="float" keeps both matrices as they are.
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
from .int4 import Int4Embedding, W4A16Linear, int4_qlinear
from .int8 import Int8Linear

log = logging.getLogger(__name__)

BACKENDS = ("fp8", "fp8-fake", "int8", "w4a16")
HEADS = ("float", "int4")
REAL_MODULES = (Fp8Linear, FakeFp8Linear, Int8Linear, W4A16Linear, Int4Embedding)


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


def vocab_int4(model: nn.Module, w4a16_mode: str) -> list[tuple[str, nn.Module]]:
    """[(model path, new module)] for head="int4": the LM head and the input embedding."""
    spec, plan = model.spec, []
    head = model.head_linear
    if head is not None:
        if isinstance(head, REAL_MODULES):
            raise ValueError(f"{spec.lm_head} is already realized ({type(head).__name__}); "
                             "realize a model once")
        if not (isinstance(head, QLinear) and head.weight_spec is not None):
            if not isinstance(head, nn.Linear | QLinear):
                raise TypeError(f"{spec.lm_head} is a {type(head).__name__}, expected nn.Linear or QLinear")
            head = int4_qlinear(head.weight, spec.lm_head)
        plan.append((spec.lm_head, W4A16Linear(head, spec.lm_head, mode=w4a16_mode)))
    emb = get_module(model, spec.embed)
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"{spec.embed} is a {type(emb).__name__}, expected nn.Embedding "
                        "(realize a model once)")
    plan.append((spec.embed, Int4Embedding(int4_qlinear(emb.weight, spec.embed), spec.embed)))
    return plan


@torch.no_grad()
def realize(model: nn.Module, backend: str, *, w4a16_mode: str = "dequant",
            head: str = "float") -> nn.Module:
    """Swap every block linear of `model` for `backend`'s real module, in place; returns model.

    w4a16_mode: "dequant" (unpack each layer's codes to a 16-bit weight when it runs, then
    cuBLAS / CPU BLAS; on a GPU the unpacking is one Triton kernel), "triton" (the fused
    dequantize-GEMM kernel, CUDA only, slower; tables/bench_kernels.md times both kernels) or
    "inductor" (the unpacking left to torch.compile to fuse into its GEMM: compile with
    mode "max-autotune"; int4.py).
    head: "float" (the LM head and embedding stay as they are) or "int4" (w4a16 only: both in
    packed int4, module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} unknown; use one of {BACKENDS}")
    if head not in HEADS:
        raise ValueError(f"head={head!r} unknown; use one of {HEADS}")
    if head == "int4" and backend != "w4a16":
        raise ValueError(f"head='int4' is a w4a16 option; backend {backend!r} keeps the head float")
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
    vocab = vocab_int4(model, w4a16_mode) if head == "int4" else []
    for block, path, new in plan:
        set_module(block, path, new)
    for path, new in vocab:
        set_module(model, path, new)
    log.info("realize %s: %d block linears%s", backend, len(plan),
             f", {' and '.join(p for p, _ in vocab)} in int4" if vocab else "")
    return model


def _concat_linears(mods: list[nn.Module]) -> nn.Linear:
    """One nn.Linear whose output is the given linears' outputs side by side."""
    w = torch.cat([m.weight.detach() for m in mods])
    bias = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
    fused = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(w, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def fuse_projections(model: nn.Module) -> nn.Module:
    """Concatenate each block's q/k/v projections into one `qkv_proj` and its gate/up
    projections into one `gate_up_proj` (the forward splits their outputs); returns model.

    The same products, so the same logits up to the GEMM's float rounding, in two GEMMs per
    block where there were five: Dream-7B's k and v projections (3584 -> 512 each) are GEMMs too
    narrow to fill the GPU, and the fused ones read the normed input once. Only plain float
    nn.Linears are fused (a group holding a real or fake-quant module is left as it is), and the
    fused model is for execution: its state_dict has the fused names, not the checkpoint's. Call
    it after `realize` (if any) and before `compile_blocks`."""
    spec = model.spec
    n = 0
    for block in model.blocks:
        for kinds, name in ((("q", "k", "v"), "qkv_proj"), (("gate", "up"), "gate_up_proj")):
            paths = [spec.linear_name(k) for k in kinds]
            mods = [get_module(block, p) for p in paths]
            parent = paths[0].rpartition(".")[0]
            if any(type(m) is not nn.Linear for m in mods) \
                    or len({(m.weight.dtype, m.weight.device, m.bias is None) for m in mods}) > 1 \
                    or {p.rpartition(".")[0] for p in paths} != {parent}:
                continue
            fused = _concat_linears(mods)
            owner = get_module(block, parent) if parent else block
            for p in paths:
                delattr(owner, p.rpartition(".")[2])
            owner.add_module(name, fused)
            n += 1
    log.info("fuse_projections: %d groups fused", n)
    return model


GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile's modes with CUDA graphs


def compile_blocks(model: nn.Module, *, mode: str | None = None, dynamic: bool | None = False,
                   backend: str = "inductor") -> nn.Module:
    """torch.compile every block in place (regional compilation), and a realized int4 LM head
    (whose dequantization, eager, would materialize the whole 16-bit head); returns model.

    mode: torch.compile's mode (None: default; "max-autotune-no-cudagraphs" tunes GEMM tiles;
    "reduce-overhead" adds CUDA graphs, which replay each block's kernels with one launch; the
    samplers keep (batch, length) fixed within a generation, so the shapes are static).
    Under "reduce-overhead" (and "max-autotune", tuned tiles and CUDA graphs) each block call starts a new CUDA-graph step
    (`torch.compiler.cudagraph_mark_step_begin`) and returns a clone of the graph's output: a
    graph's outputs live in a pool its next replay overwrites, and the same graph serves every
    block and every denoising step, so without the clone block i's output (block i + 1's input,
    the residual stream) is overwritten while still in use. The clone costs one copy of the
    hidden states per block (B x L x C). At batch 1 a step without graphs is launch-bound: one
    w4a16 LLaDA-8B step launches ~700 kernels, and in one profiled 8-step call the H200 was busy
    130 of its 308 ms; with "reduce-overhead" the step took 18.1 ms instead of 28.7 ms (Dream:
    20.7 instead of 29.5), the same tokens (bench_kernels.py's w4a16-graphs backend).
    dynamic=False specializes on each (batch, length). backend: torch.compile's ("eager" traces
    without generating code: the CPU tests use it)."""
    for block in model.blocks:
        if mode in GRAPH_MODES:
            block._compiled_call_impl = _graphed(
                torch.compile(block._call_impl, mode=mode, dynamic=dynamic, backend=backend))
        else:
            block.compile(mode=mode, dynamic=dynamic, backend=backend)
    head = model.head_linear
    if isinstance(head, W4A16Linear):
        # its number of rows changes with the sampler's window and the likelihood's positions:
        # automatic dynamic shapes (one recompile, then a graph for any M), no CUDA graphs
        head.compile(mode={"reduce-overhead": None, "max-autotune": "max-autotune-no-cudagraphs"}
                     .get(mode, mode), dynamic=None,
                     backend=backend)
    return model


def _graphed(compiled):
    """The block call under CUDA graphs (nn.Module.compile's `_compiled_call_impl` slot, wrapped):
    a new graph step per call, and the output copied out of the graph's memory pool."""
    def call(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args, **kwargs).clone()

    return call


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
