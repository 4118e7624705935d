"""The embedded suite's data for lm-eval: the JSONL splits dllmq's task generator writes.

Tasks (`embedded/*.yaml`, each an `EmbeddedTask`): `dllmq_qa` (multiple choice by likelihood, ARC's prompt),
`dllmq_math` (generate_until, exact match on the `#### N` line, GSM8K's prompt and filter),
`dllmq_code` (generate_until, pass@1 by execution, HumanEval's prompt and stop sequences).

Files: `{dir}/{category}_{split}.jsonl` for category qa, math, code and split train, fewshot,
test, as `python -m dllmq.tasks write DIR` writes them, where `dir` is the task manager's metadata
`dllmq_embedded_dir`, else `$DLLMQ_EMBEDDED_DIR`. With neither set, the suite is generated in
process from its seed (metadata `dllmq_embedded_seed`, default the suite's DEFAULT_SEED): the same
rows the files would hold. Rows follow the generator's schema:
qa {id, question, choices, gold, difficulty}, math {id, question, answer, target, difficulty},
code {id, prompt, entry_point, test, canonical_solution, difficulty}.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import datasets
from lm_eval.api.task import ConfigurableTask

EMBEDDED_DIR_ENV = "DLLMQ_EMBEDDED_DIR"
EMBEDDED_DIR_KEY = "dllmq_embedded_dir"
EMBEDDED_SEED_KEY = "dllmq_embedded_seed"
SPLITS = ("train", "fewshot", "test")
FIELDS = {
    "qa": ("id", "question", "choices", "gold", "difficulty"),
    "math": ("id", "question", "answer", "target", "difficulty"),
    "code": ("id", "prompt", "entry_point", "test", "canonical_solution", "difficulty"),
}


class EmbeddedDataError(FileNotFoundError):
    """A missing or malformed embedded-suite file: the message is one line naming the fix."""


log = logging.getLogger(__name__)


def embedded_dir(metadata: dict | None = None) -> Path | None:
    """Where the embedded JSONL lives (metadata, then the environment), or None: generate."""
    value = (metadata or {}).get(EMBEDDED_DIR_KEY) or os.environ.get(EMBEDDED_DIR_ENV)
    return Path(value).expanduser() if value else None


def read_split(category: str, split: str, directory: Path) -> list[dict]:
    """One split's rows from `{directory}/{category}_{split}.jsonl`."""
    path = Path(directory) / f"{category}_{split}.jsonl"
    if not path.is_file():
        raise EmbeddedDataError(f"missing embedded-suite file {path}: write the suite with "
                                f"`python -m dllmq.tasks write {directory}` or unset "
                                f"{EMBEDDED_DIR_ENV} to generate it in process")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _generated(seed: int):
    from dllmq.tasks.suite import shared_suite

    return shared_suite(seed)  # generated in process once, shared with the calibration text


def generated_split(category: str, split: str, seed: int | None = None) -> list[dict]:
    """One split's rows generated in process, the rows `write_suite` would write."""
    from dllmq.tasks import DEFAULT_SEED

    return _generated(DEFAULT_SEED if seed is None else int(seed)).rows(category, split)


def load_category(category: str, metadata: dict) -> datasets.DatasetDict:
    """Every split of one category, each row checked to carry the category's fields."""
    directory = embedded_dir(metadata)
    out = {}
    for split in SPLITS:
        rows = (read_split(category, split, directory) if directory is not None
                else generated_split(category, split, metadata.get(EMBEDDED_SEED_KEY)))
        for i, row in enumerate(rows):
            missing = [f for f in FIELDS[category] if f not in row]
            if missing:
                raise EmbeddedDataError(f"{category}_{split} row {i + 1} lacks "
                                        f"{', '.join(missing)}: not the embedded suite's schema")
        out[split] = datasets.Dataset.from_list([{f: row[f] for f in FIELDS[category]}
                                                 for row in rows])
    return datasets.DatasetDict(out)


class EmbeddedTask(ConfigurableTask):
    """lm-eval's ConfigurableTask over one category of the embedded suite (`dataset_name`: qa,
    math or code), read by `load_category` with the task manager's metadata. A task class
    rather than lm-eval's `custom_dataset` hook, which logs a "Custom kwargs" warning every
    time a task is built (twice per evaluated cell)."""

    def __init__(self, config: dict):
        super().__init__(config={k: v for k, v in config.items() if k != "class"})

    def download(self, dataset_kwargs: dict | None = None, **kwargs) -> None:
        self.dataset = load_category(self.config.dataset_name, dict(self.config.metadata or {}))
