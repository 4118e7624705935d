"""Post-training quantization for dLLMs: primitives, one file per method, recipes as data.

Entry point: `quantize_(model, recipe, calib)` (api.py). Importing this package registers every
method in the `{ConfigType: apply}` table: RTN, GPTQ, AWQ, SmoothQuant, QuaRot, DuQuant.
"""

from . import awq, duquant, gptq, quarot, rtn, smoothquant
from .api import METHODS, QuantSummary, block_linears, check_kinds, quantize_, register
from .awq import AWQConfig
from .calib import BlockInputs, Calibration, mask_schedule, walk_blocks
from .duquant import DuQuantConfig
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
from .quarot import QuaRotConfig
from .recipes import RECIPES, get_recipe
from .rtn import RTNConfig
from .smoothquant import SmoothQuantConfig

__all__ = [
    "AWQConfig", "BlockInputs", "Calibration", "DuQuantConfig", "GPTQConfig", "METHODS",
    "QLinear", "QuaRotConfig", "QuantResult", "QuantSpec", "QuantSummary", "RECIPES",
    "RTNConfig", "SmoothQuantConfig", "as_qlinear", "awq", "block_linears", "check_kinds",
    "dequantize", "duquant", "fake_quant", "get_recipe", "gptq", "gptq_quantize",
    "load_quantized", "mask_schedule", "quant_params", "quantize", "quantize_",
    "quantize_weight", "quarot", "register", "rtn", "save_quantized", "smoothquant",
    "walk_blocks",
]
