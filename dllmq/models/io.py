"""Loading and saving in the official layout: config.json + safetensors shards (+ index).

`load("GSAI-ML/LLaDA-8B-Instruct")`, `load("/path/to/Dream-v0-Base-7B")` and
`load("tiny-llada-instruct")` (shipped inside the package) all go through here.
The architecture is picked from config.json's `model_type`, never from the path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import DLLMConfig
from .model import DLLM, MODEL_CLASSES, build_model

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"


class LoadError(RuntimeError):
    """A checkpoint that cannot be loaded; the message says what to fix."""


def shipped_models() -> list[str]:
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())


def resolve(name_or_path: str | Path) -> Path:
    """A local directory holding config.json: shipped name, existing path, or Hub snapshot."""
    name = str(name_or_path)
    if (SHIPPED_DIR / name / "config.json").is_file():
        return SHIPPED_DIR / name
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise LoadError(f"{p} is a file; pass the checkpoint directory that holds config.json")
        if not (p / "config.json").is_file():
            raise LoadError(f"{p} has no config.json; pass a checkpoint directory "
                            "(config.json + *.safetensors)")
        return p
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise LoadError(f"{name!r} is neither a shipped model ({', '.join(shipped_models()) or 'none'}), "
                        "an existing directory, nor a Hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # network, auth, missing repo: one line with the cause
        raise LoadError(f"could not fetch {name!r} from the Hugging Face Hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); download it and pass the "
                        "local directory instead") from e


def read_config(path: Path) -> DLLMConfig:
    with open(path / "config.json") as f:
        return DLLMConfig.from_hf(json.load(f))


def _shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise LoadError(f"{path} is missing weight shard(s) {', '.join(missing)} listed in "
                            "model.safetensors.index.json; download them again")
        return [path / f for f in files]
    if (path / "model.safetensors").is_file():  # the single-file layout; ignore other files
        return [path / "model.safetensors"]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{path} has no *.safetensors weights; convert .bin checkpoints with "
                        "safetensors first")
    return files


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> DLLM:
    """Load a LLaDA or Dream checkpoint (bf16 on GPU, fp32 on CPU by default), in eval mode.
    A directory written by `dllmq.quant.save_quantized` (packed low-bit weights) is rebuilt by
    `dllmq.quant.load_quantized`."""
    path = resolve(name_or_path)
    with open(path / "config.json") as f:
        raw = json.load(f)
    cfg = DLLMConfig.from_hf(raw)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"device {device} was asked for {name_or_path} but CUDA is not available; "
                        "pass device='cpu' (a preset's `device:` key)")
    dtype = dtype or default_dtype(device)
    if "quantization_config" in raw:
        from dllmq.quant.export import load_quantized

        return load_quantized(path, device=device, dtype=dtype).eval()
    with torch.device("meta"):
        model = MODEL_CLASSES[cfg.model_type](cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for file in _shard_files(path):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key not in expected:
                    raise LoadError(f"{file.name} holds unexpected weight {key!r} for a "
                                    f"{cfg.model_type} model; is config.json from the same checkpoint?")
                t = f.get_tensor(key)
                if tuple(t.shape) != tuple(expected[key]):
                    raise LoadError(f"weight {key!r} in {file.name} has shape {tuple(t.shape)}, "
                                    f"config.json implies {tuple(expected[key])}; config and weights "
                                    "do not belong together")
                state[key] = t.to(dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise LoadError(f"{path} lacks {len(missing)} weight(s), e.g. {missing[0]!r}; a shard is "
                        "missing or the checkpoint is incomplete")
    model.load_state_dict(state, assign=True)
    if cfg.model_type == "Dream" and cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    log.info("loaded %s (%s, %.1fM parameters) on %s as %s", path, cfg.model_type,
             sum(p.numel() for p in model.parameters()) / 1e6, device, dtype)
    return model.eval()


def save_pretrained(model: DLLM, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json + safetensors shards in the official layout, atomically per file."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        state.pop("model.transformer.ff_out.weight", None)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards, strict=True):
        tmp = path / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / name)
    if len(shards) > 1:
        weight_map = {k: n for n, s in zip(names, shards, strict=True) for k in s}
        _write_json(path / "model.safetensors.index.json",
                    {"metadata": {"total_size": sum(v.numel() * v.element_size()
                                                    for v in state.values())},
                     "weight_map": weight_map})
    _write_json(path / "config.json", model.config.to_hf())
    if model.config.model_type == "Dream":  # the official DreamModel.from_pretrained reads it
        cfg = model.config
        ids = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
               "pad_token_id": cfg.pad_token_id, "mask_token_id": cfg.mask_token_id}
        _write_json(path / "generation_config.json",
                    {k: v for k, v in ids.items() if v is not None})
    return path


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def random_model(cfg: DLLMConfig, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> DLLM:
    """A seeded random model (tests, timing with 8B shapes)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg)
    return model.to(device=device, dtype=dtype).eval()


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer saved next to a checkpoint (transformers' fast tokenizer, no remote code)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    path = resolve(name_or_path)
    if (path / "tokenizer_config.json").is_file():
        # AutoTokenizer reads config.json, whose model_type (llada, Dream) transformers does not
        # know, and warns about it on every load; the tokenizer itself is unaffected
        config_log = hf_logging.get_logger("transformers.configuration_utils")
        level = config_log.level
        config_log.setLevel(hf_logging.ERROR)
        try:
            return AutoTokenizer.from_pretrained(str(path))
        finally:
            config_log.setLevel(level)
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    raise LoadError(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json)")
