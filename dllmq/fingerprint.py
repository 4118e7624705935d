"""Fingerprints of what a result depends on: checkpoint content, task config and documents,
package versions. The results store keys every cell by them (`dllmq.store`).

    fp = checkpoint_fingerprint("tiny-llada-instruct", cache)   # "sha256:..." of the files
    task_fingerprint(task_objects)                               # config + documents
    versions()                                                   # {"dllmq": ..., "lm_eval": ...}

Checkpoints are identified by their content, never by their path: a local directory (or a
shipped model) is the SHA-256 of every file that can change the model (weights, config,
tokenizer, chat template; not *.md or *.log), each file hashed in full. Hashing runs at
about 870 MB/s on this repository's 2-core AMD EPYC CI box (`hashlib.file_digest`, SHA-NI;
measured on a 1 GB file), so a 16 GB LLaDA-8B checkpoint costs ~19 s once. The digest of each
file is then cached by (path, size, mtime_ns, ctime_ns, inode, device) in a `DigestCache`
(the results store keeps one): any write to a file changes its ctime, which user space cannot
set back, so a corrupted file restored at the same path (even with `cp -p`) is hashed again.
A Hub snapshot (`.../snapshots/<commit>/`) is hashed the same way: its files are links into
the content-addressed blob cache, so its digest stays the commit's.

A task is fingerprinted by its resolved lm-eval config (functions as their source, the
absolute `config_source` path dropped) and by the documents it evaluates and draws few-shot
examples from, hashed row by row: this covers local data files, the Hub's files and the
embedded suite alike, whatever loaded them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from . import __version__

log = logging.getLogger(__name__)

SKIP_SUFFIXES = (".md", ".log")  # documentation and training logs do not change the model


class DigestCache(Protocol):
    def get_digest(self, key: str) -> str | None: ...
    def put_digest(self, key: str, digest: str) -> None: ...


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def file_digest(path: str | Path, cache: DigestCache | None = None) -> str:
    """SHA-256 of a file's bytes (cached by path, size, mtime, ctime, inode, device)."""
    path = Path(path)
    key = _stat_key(path)
    if cache is not None and (hit := cache.get_digest(key)) is not None:
        return hit
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if cache is not None:
        cache.put_digest(key, digest)
    return digest


def model_files(directory: Path) -> list[Path]:
    """The files of a checkpoint directory that can change the model, sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts)
                  and p.suffix not in SKIP_SUFFIXES)


def directory_fingerprint(directory: str | Path, cache: DigestCache | None = None) -> str:
    """One digest over (relative name, content digest) of every model file of a directory."""
    directory = Path(directory)
    files = model_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory} holds no checkpoint files to fingerprint")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(directory).as_posix()}\0{file_digest(p, cache)}\n".encode())
    return "sha256:" + h.hexdigest()


def checkpoint_fingerprint(name_or_path: str, cache: DigestCache | None = None) -> str:
    """The content fingerprint of a shipped model, a local checkpoint or a Hub snapshot."""
    from .models.io import resolve

    return directory_fingerprint(resolve(name_or_path), cache)


def _plain(obj: Any) -> Any:
    """JSON-able form of a config value: callables become their source (lm-eval's to_dict
    already does that for the functions it knows), others their repr."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if callable(obj):
        import inspect

        try:
            return inspect.getsource(obj)
        except (OSError, TypeError):
            return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    return repr(obj)


def _docs_digest(h, docs: Iterable[Mapping[str, Any]] | None) -> int:
    n = 0
    for doc in docs or ():
        h.update(json.dumps(_plain(dict(doc)), sort_keys=True, default=str).encode())
        h.update(b"\n")
        n += 1
    return n


def task_fingerprint(loaded: Mapping[str, Any]) -> str:
    """Digest of lm-eval tasks as `TaskManager.load([name])` returns them: every leaf task's
    config (without its `config_source` path) and its evaluation and few-shot documents; for
    a group, also the group configs."""
    h = hashlib.sha256()
    for name in sorted(loaded.get("groups", {})):
        cfg = loaded["groups"][name]
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else getattr(cfg, "config", cfg)
        h.update(f"group {name} ".encode() + json.dumps(_plain(cfg), sort_keys=True).encode())
    for name in sorted(loaded.get("tasks", {})):
        task = loaded["tasks"][name]
        cfg = _plain(task.config.to_dict())
        meta = cfg.pop("metadata", None) or {}
        cfg["metadata"] = {k: v for k, v in meta.items()
                           if k not in ("config_source", "dllmq_data_dir")}
        h.update(f"task {name} ".encode() + json.dumps(cfg, sort_keys=True).encode())
        n = _docs_digest(h, task.eval_docs)
        h.update(b"fewshot\n")
        _docs_digest(h, task.fewshot_docs())
        log.debug("task %s: %d documents fingerprinted", name, n)
    return "sha256:" + h.hexdigest()


def versions() -> dict[str, str]:
    """The package versions a result depends on."""
    return {"dllmq": __version__, "lm_eval": metadata.version("lm_eval")}


def environment_device(device: str | None) -> str:
    """A short name of the device a measurement ran on (for rates, not for keys)."""
    import torch

    if device and str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu x{os.cpu_count()}"
