"""The embedded suite's data for lm-eval: the JSONL splits dllmq's task generator writes.

Tasks (`embedded/*.yaml`): `dllmq_qa` (multiple choice by likelihood, ARC's prompt),
`dllmq_math` (generate_until, exact match on the `#### N` line, GSM8K's prompt and filter),
`dllmq_code` (generate_until, pass@1 by execution, HumanEval's prompt and stop sequences).

Files: `{dir}/{category}/{split}.jsonl` for category qa, math, code and split train, fewshot, test,
where `dir` is the task manager's metadata `dllmq_embedded_dir`, else `$DLLMQ_EMBEDDED_DIR`, else
the package's `dllmq/assets/tasks`. Rows follow the generator's schema:
qa {id, question, choices, gold, difficulty}, math {id, question, answer, target, difficulty},
code {id, prompt, entry_point, test, canonical_solution, difficulty}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

EMBEDDED_DIR_ENV = "DLLMQ_EMBEDDED_DIR"
EMBEDDED_DIR_KEY = "dllmq_embedded_dir"
DEFAULT_EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "assets" / "tasks"
SPLITS = ("train", "fewshot", "test")
FIELDS = {
    "qa": ("id", "question", "choices", "gold", "difficulty"),
    "math": ("id", "question", "answer", "target", "difficulty"),
    "code": ("id", "prompt", "entry_point", "test", "canonical_solution", "difficulty"),
}


class EmbeddedDataError(FileNotFoundError):
    """A missing or malformed embedded-suite file: the message is one line naming the fix."""


def embedded_dir(metadata: dict | None = None) -> Path:
    """Where the embedded JSONL lives: metadata, then the environment, then the package."""
    value = (metadata or {}).get(EMBEDDED_DIR_KEY) or os.environ.get(EMBEDDED_DIR_ENV)
    return Path(value).expanduser() if value else DEFAULT_EMBEDDED_DIR


def read_split(category: str, split: str, directory: Path) -> list[dict]:
    """One split's rows, each checked to carry the category's fields."""
    path = Path(directory) / category / f"{split}.jsonl"
    if not path.is_file():
        raise EmbeddedDataError(f"missing embedded-suite file {path}: write the suite with dllmq's "
                                f"task generator or set {EMBEDDED_DIR_ENV} to where it is")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for i, row in enumerate(rows):
        missing = [f for f in FIELDS[category] if f not in row]
        if missing:
            raise EmbeddedDataError(f"{path} line {i + 1} lacks {', '.join(missing)}: not a "
                                    f"{category} file of the embedded suite")
    return rows


def load_category(category: str, metadata: dict) -> datasets.DatasetDict:
    directory = embedded_dir(metadata)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(
        [{f: row[f] for f in FIELDS[category]} for row in read_split(category, split, directory)])
        for split in SPLITS})


# lm-eval calls `custom_dataset(**metadata, **dataset_kwargs)`.
def load_qa(**metadata) -> datasets.DatasetDict:
    return load_category("qa", metadata)


def load_math(**metadata) -> datasets.DatasetDict:
    return load_category("math", metadata)


def load_code(**metadata) -> datasets.DatasetDict:
    return load_category("code", metadata)
