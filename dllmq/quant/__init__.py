"""Post-training quantization for dLLMs: primitives, one file per method, recipes as data.

Entry point: `quantize_(model, recipe, calib)` (api.py). Importing this package registers the
methods implemented here (RTN, GPTQ, AWQ); smoothquant/quarot/duquant register on import.
"""

from . import awq, gptq, rtn
from .api import METHODS, QuantSummary, block_linears, check_kinds, quantize_, register
from .awq import AWQConfig
from .calib import BlockInputs, Calibration, mask_schedule, walk_blocks
from .export import load_quantized, save_quantized
from .gptq import GPTQConfig, gptq_quantize
from .primitives import (
    QuantResult,
    QuantSpec,
    dequantize,
    fake_quant,
    quant_params,
    quantize,
    quantize_weight,
)
from .qlinear import QLinear, as_qlinear
from .recipes import RECIPES, get_recipe
from .rtn import RTNConfig

__all__ = [
    "AWQConfig", "GPTQConfig", "METHODS", "RECIPES", "BlockInputs", "Calibration", "QLinear", "QuantResult", "QuantSpec",
    "QuantSummary", "RTNConfig", "as_qlinear", "awq", "block_linears", "check_kinds", "dequantize",
    "fake_quant", "get_recipe", "gptq", "load_quantized", "save_quantized", "gptq_quantize", "mask_schedule", "quant_params", "quantize", "quantize_",
    "quantize_weight", "register", "rtn", "walk_blocks",
]
