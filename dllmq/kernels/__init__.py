"""Real low-bit execution of quantized models (separate from the fake-quant study path).

    model = dllmq.load(...); quantize_(model, "w4a16g128-gptq", calib)   # or load_quantized(dir)
    realize(model, "w4a16")            # packed int4 + dequantize-GEMM
    realize(model, "w4a16", head="int4")   # ... and the LM head + embedding in int4 too
    fuse_projections(model)            # q/k/v and gate/up float linears as one GEMM each (optional)
    compile_blocks(model)              # torch.compile each block (optional, GPU)

Backends: "fp8" (W8A8 e4m3, torch._scaled_mm), "fp8-fake" (its fake-quant twin), "int8" (W8A8,
torch._int_mm), "w4a16" (packed int4, Triton on GPU). See realize.py.
"""

from .fp8 import FakeFp8Linear, Fp8Linear, fp8_rowwise_reference, quantize_fp8_rowwise
from .int4 import Int4Embedding, W4A16Linear
from .int8 import Int8Linear
from .realize import BACKENDS, compile_blocks, fuse_projections, realize, weight_bytes

__all__ = [
    "BACKENDS", "FakeFp8Linear", "Fp8Linear", "Int4Embedding", "Int8Linear", "W4A16Linear", "compile_blocks",
    "fp8_rowwise_reference", "fuse_projections", "quantize_fp8_rowwise", "realize", "weight_bytes",
]
