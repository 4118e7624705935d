"""dllmq: post-training quantization of masked diffusion LLMs (LLaDA, Dream), reproducibly."""

__version__ = "0.1.0"  # first: submodules (the results store) read it while the package imports

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from . import models  # noqa: E402
from .models import DLLMConfig, load_tokenizer, random_model, save_pretrained, tiny_config  # noqa: E402
from .quant import Calibration, QuantSpec, quantize_  # noqa: E402
from .quant.export import load_quantized  # noqa: E402


def load(name_or_path: str | Path, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> models.DLLM:
    """Load any checkpoint dllmq reads: the official layout (`dllmq.models.load`: shipped name,
    local directory or Hub id) or a packed low-bit directory written by
    `dllmq.quant.save_quantized` (rebuilt by `dllmq.quant.load_quantized`). Dispatching here,
    above both, keeps `dllmq.models` free of quantization."""
    path = models.io.resolve(name_or_path)
    if not models.io.is_packed(models.io.read_raw_config(path)):
        return models.load(path, device=device, dtype=dtype)
    device = models.io.resolve_device(device, name_or_path)
    return load_quantized(path, device=device, dtype=dtype or models.io.default_dtype(device)).eval()


__all__ = ["Calibration", "DLLMConfig", "QuantSpec", "__version__", "load", "load_tokenizer",
           "random_model", "quantize_", "save_pretrained", "tiny_config"]
