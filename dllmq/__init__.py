"""dllmq: post-training quantization of masked diffusion LLMs (LLaDA, Dream), reproducibly."""

__version__ = "0.1.0"  # first: submodules (the results store) read it while the package imports

from .models import DLLMConfig, load, load_tokenizer, random_model, save_pretrained, tiny_config  # noqa: E402
from .quant import Calibration, QuantSpec, quantize_  # noqa: E402

__all__ = ["Calibration", "DLLMConfig", "QuantSpec", "__version__", "load", "load_tokenizer",
           "random_model", "quantize_", "save_pretrained", "tiny_config"]
