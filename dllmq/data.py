"""Where text comes from: the data-directory setting and the calibration sources.

- `data_dir()`: the local directory of benchmark/calibration files for offline machines: the
  `DLLMQ_DATA_DIR` environment variable (the same setting the paper tasks read), else None (then
  the Hugging Face Hub is used, as lm-eval and the paper do). Nothing outside the package is
  looked at unless that variable names it.
- `calibration_text(source, ...)`: WikiText-2 (GPTQ, QuaRot, DuQuant, SmoothQuant in the paper),
  Pile-val (AWQ), or the embedded corpus (the shipped tiny models). No silent fallback: if the
  source is not available, the error says where to put the file.
- `calibration_set(...)`: tokenised random windows (GPTQ's sampling) as a `quant.Calibration`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

SOURCES = ("wikitext2", "pileval", "embedded")


class DataError(FileNotFoundError):
    """Data that is not where dllmq was told to look; the message says where to put it."""


def data_dir() -> Path | None:
    """`$DLLMQ_DATA_DIR` (DataError, one line naming it, when it is not a directory), or None."""
    from .tasks.lm_eval.local_data import DATA_DIR_ENV

    env = os.environ.get(DATA_DIR_ENV)
    if not env:
        return None
    p = Path(env).expanduser()
    if not p.is_dir():
        raise DataError(f"{DATA_DIR_ENV}={env} is not a directory; point it at the folder "
                        "holding the benchmark files (see README), or unset it to use the Hub")
    return p


def _local(name: str) -> Path | None:
    d = data_dir()
    return d / name if d is not None and (d / name).is_file() else None


def calibration_text(source: str, split: str = "train", seed: int = 0) -> str:
    """The raw text of a calibration source, joined as the reference implementations join it."""
    if source not in SOURCES:
        raise ValueError(f"unknown calibration source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "embedded":
        return _embedded_text(seed)
    if source == "wikitext2":
        local = _local(f"wikitext2_raw_{split}.txt")
        if local is not None:
            return "\n\n".join(line for line in local.read_text().splitlines() if line.strip())
        if data_dir() is not None and split == "train":
            raise DataError(f"{data_dir()} has no wikitext2_raw_train.txt (the paper calibrates on "
                            "the train split); add it, or pass split='test' to use "
                            "wikitext2_raw_test.txt knowingly")
        return "\n\n".join(_hub_rows("wikitext", "wikitext-2-raw-v1", split, "text"))
    local = _local("pile_val.jsonl")
    if local is not None:
        return "\n\n".join(json.loads(line)["text"] for line in local.read_text().splitlines()[:5000])
    if data_dir() is not None:
        raise DataError(f"{data_dir()} has no pile_val.jsonl (AWQ's calibration set, one "
                        "{'text': ...} per line); add it or calibrate on wikitext2")
    return "\n\n".join(_hub_rows("mit-han-lab/pile-val-backup", None, "validation", "text")[:5000])


@functools.lru_cache(maxsize=4)
def _embedded_text(seed: int, max_chars: int = 400_000) -> str:
    """A seeded sample of the tiny models' pretraining documents (facts, worked problems, code,
    standard-library source), about `max_chars` long: enough for any calibration set the
    embedded preset draws, and cheap to tokenize once per quantized model."""
    import random

    from .tasks.corpus import build_corpus
    from .tasks.suite import shared_suite

    docs = list(build_corpus(suite=shared_suite()).pretrain)
    random.Random(seed).shuffle(docs)
    out, n = [], 0
    for d in docs:
        if n >= max_chars:
            break
        out.append(d)
        n += len(d) + 2
    return "\n\n".join(out)


def _hub_rows(path: str, name: str | None, split: str, field: str) -> list[str]:
    try:
        from datasets import load_dataset

        ds = load_dataset(path, name, split=split)
    except Exception as e:  # offline, missing dataset: one line naming the fix
        raise DataError(f"could not load {path}{'/' + name if name else ''} ({split}) from the Hub "
                        f"({type(e).__name__}); set DLLMQ_DATA_DIR to a folder with the file") from e
    return [r[field] for r in ds if r[field].strip()]


def calibration_set(tokenizer, source: str, nsamples: int, seqlen: int, seed: int = 0,
                    split: str = "train", **calib_kw):
    """`nsamples` random windows of `seqlen` tokens of the source (paper: 128 x 2048 WikiText-2)."""
    import torch

    from .quant.calib import Calibration

    text = calibration_text(source, split=split, seed=seed)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    return Calibration.from_token_stream(ids, nsamples, seqlen, seed=seed, **calib_kw)
