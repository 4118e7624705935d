"""LLaDA and Dream as plain nn.Modules, their configs, architecture specs and checkpoint I/O."""

from .arch import (
    DREAM_SPEC,
    INPUT_GROUPS,
    LINEAR_KINDS,
    LLADA_SPEC,
    SPECS,
    ArchSpec,
    InputGroup,
    arch_spec,
    get_module,
    has_module,
    input_hooks,
    set_module,
)
from .config import ConfigError, DLLMConfig, tiny_config
from .io import LoadError, load, load_tokenizer, random_model, save_pretrained, shipped_models
from .model import DLLM, DreamModel, LLaDAModel, build_model

__all__ = [
    "DLLM", "DREAM_SPEC", "INPUT_GROUPS", "InputGroup", "LINEAR_KINDS", "LLADA_SPEC", "SPECS", "ArchSpec", "arch_spec", "ConfigError", "DLLMConfig",
    "DreamModel", "LLaDAModel", "LoadError", "build_model", "get_module", "has_module", "input_hooks", "load", "load_tokenizer",
    "random_model", "save_pretrained", "set_module", "shipped_models", "tiny_config",
]
