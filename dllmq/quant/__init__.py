"""Post-training quantization for dLLMs, a one-way stack (each layer imports only those below):

    registry    the {ConfigType: apply} table, checks, block-linear helpers
    primitives  Eq. 1 as pure tensor functions; hadamard: Hadamard matrices
    qlinear     QLinear; transforms: the online transform modules
    calib       calibration data and the block walker
    rtn gptq awq smoothquant quarot duquant    one file per method
    recipes     every paper setting, as data
    api         `quantize_(model, recipe, calib)`, the one verb
    export      packed low-bit checkpoints (save_quantized / load_quantized)
Importing this package registers every method: RTN, GPTQ, AWQ, SmoothQuant, QuaRot, DuQuant.
"""

from . import awq, duquant, gptq, quarot, rtn, smoothquant
from .api import QuantSummary, quantize_
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
from .recipes import RECIPES, CalibSpec, get_calibration, get_recipe
from .registry import METHODS, block_linears, check_kinds, register
from .rtn import RTNConfig
from .smoothquant import SmoothQuantConfig
from .transforms import DuQuantTransform, HeadActQuant, HeadMixHadamard, OnlineHadamard

__all__ = [
    "AWQConfig", "BlockInputs", "CalibSpec", "Calibration", "DuQuantConfig", "DuQuantTransform",
    "HeadActQuant", "HeadMixHadamard", "OnlineHadamard", "get_calibration", "GPTQConfig", "METHODS",
    "QLinear", "QuaRotConfig", "QuantResult", "QuantSpec", "QuantSummary", "RECIPES",
    "RTNConfig", "SmoothQuantConfig", "as_qlinear", "awq", "block_linears", "check_kinds",
    "dequantize", "duquant", "fake_quant", "get_recipe", "gptq", "gptq_quantize",
    "load_quantized", "mask_schedule", "quant_params", "quantize", "quantize_",
    "quantize_weight", "quarot", "register", "rtn", "save_quantized", "smoothquant",
    "walk_blocks",
]
