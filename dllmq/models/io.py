"""Loading and saving in the official layout: config.json + safetensors shards (+ index).

`load("GSAI-ML/LLaDA-8B-Instruct")`, `load("/path/to/Dream-v0-Base-7B")` and
`load("tiny-llada-instruct")` (shipped inside the package) all go through here.
The architecture is picked from config.json's `model_type`, never from the path.
"""

from __future__ import annotations

import json
import logging
import os
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
    return DLLMConfig.from_hf(read_raw_config(path))


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


def read_raw_config(path: Path) -> dict:
    """config.json of a resolved checkpoint directory, as the dict it holds."""
    try:
        with open(path / "config.json") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise LoadError(f"{path / 'config.json'} is not valid JSON ({e}); download it again") from e


def is_packed(raw: dict) -> bool:
    """Whether a config.json describes a packed low-bit checkpoint (`dllmq.quant.save_quantized`),
    which `dllmq.load` rebuilds through `dllmq.quant.load_quantized`."""
    return "quantization_config" in raw


def resolve_device(device: str | torch.device | None, what: object) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"device {device} was asked for {what} but CUDA is not available; "
                        "pass device='cpu' (a preset's `device:` key)")
    return device


def open_safetensors(file: Path, device: torch.device | str = "cpu"):
    """safe_open with a one-line LoadError naming the file when it is truncated or not
    safetensors (safetensors' own message names neither the file nor the fix)."""
    try:
        return safe_open(str(file), framework="pt", device=str(device))
    except Exception as e:  # SafetensorError (header), OSError: any unreadable file, one line
        raise LoadError(f"{file} is not a readable safetensors file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); it is truncated or "
                        "corrupt: download or save it again") from e


def warn_nonfinite(name: str, t: torch.Tensor, file: Path) -> None:
    """A warning naming a floating-point tensor that holds NaN or inf. Loading goes on (an
    analysis may want to look at such weights), but every output of the model is suspect."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n = int((~torch.isfinite(t)).sum())
        log.warning("weight %r in %s holds %d NaN/inf value(s) of %d; the model's outputs will "
                    "not be finite: re-download or re-save the checkpoint", name, file.name, n,
                    t.numel())


def load(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> DLLM:
    """Load a LLaDA or Dream checkpoint (bf16 on GPU, fp32 on CPU by default), in eval mode.

    A weight holding NaN/inf gives a warning naming it; a truncated or corrupt weight file, a
    missing, unexpected or misshapen weight a one-line LoadError. A packed low-bit directory
    (`dllmq.quant.save_quantized`) is refused here: `dllmq.load` dispatches it to
    `dllmq.quant.load_quantized` (models/ knows nothing of quantization)."""
    path = resolve(name_or_path)
    raw = read_raw_config(path)
    if is_packed(raw):
        raise LoadError(f"{path} holds a packed quantized checkpoint; load it with dllmq.load "
                        "(or dllmq.quant.load_quantized)")
    cfg = DLLMConfig.from_hf(raw)
    device = resolve_device(device, name_or_path)
    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        model = MODEL_CLASSES[cfg.model_type](cfg)
    tied = set(model.tied_keys)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in tied}
    state: dict[str, torch.Tensor] = {}
    for file in _shard_files(path):
        with open_safetensors(file, device) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key in tied:  # a tied head stored anyway: it is the embedding
                    continue
                if key not in expected:
                    raise LoadError(f"{file.name} holds unexpected weight {key!r} for a "
                                    f"{cfg.model_type} model; is config.json from the same checkpoint?")
                try:
                    t = f.get_tensor(key)
                except Exception as e:  # a header that promises more bytes than the file has
                    raise LoadError(f"{file} is truncated or corrupt (reading {key!r}: "
                                    f"{type(e).__name__}); download or save it again") from e
                if tuple(t.shape) != tuple(expected[key]):
                    raise LoadError(f"weight {key!r} in {file.name} has shape {tuple(t.shape)}, "
                                    f"config.json implies {tuple(expected[key])}; config and weights "
                                    "do not belong together")
                warn_nonfinite(key, t, file)
                state[key] = t.to(dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise LoadError(f"{path} lacks {len(missing)} weight(s), e.g. {missing[0]!r}; a shard is "
                        "missing or the checkpoint is incomplete")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    log.info("loaded %s (%s, %.1fM parameters) on %s as %s", path, cfg.model_type,
             sum(p.numel() for p in model.parameters()) / 1e6, device, dtype)
    return model.eval()


def save_pretrained(model: DLLM, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json + safetensors shards in the official layout, atomically per file."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if k not in model.tied_keys}
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
        write_safetensors(shard, path / name)
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


def _file_mode() -> int:
    """The mode a new file gets under the process umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """save_file atomically (a temporary file renamed into place), with a normal file mode:
    safetensors creates its files 0600, which other users of a shared checkpoint cannot read."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, _file_mode())
    tmp.replace(path)


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
