"""dllmq: post-training quantization of masked diffusion LLMs (LLaDA, Dream), reproducibly."""

from .models import DLLMConfig, load, load_tokenizer, random_model, save_pretrained, tiny_config
from .quant import Calibration, QuantSpec, quantize_

__version__ = "0.1.0"

__all__ = ["Calibration", "DLLMConfig", "QuantSpec", "__version__", "load", "load_tokenizer",
           "random_model",
           "quantize_", "save_pretrained", "tiny_config"]
