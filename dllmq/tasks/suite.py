"""The embedded task suite: the three generators under one seed, written out as JSONL.

`build_suite(seed)` returns every category's train / few-shot / test items; `write_suite(dir)`
writes `{category}_{split}.jsonl` (one JSON object per line, keys sorted) for lm-eval's task
files. Same seed, same bytes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from . import code_problems, math_problems, qa
from .common import CATEGORIES, SPLITS, Item

log = logging.getLogger(__name__)

DEFAULT_SEED = 0
# Items per category a default (CPU) evaluation scores: the first N of the test split, whose
# order keeps difficulty levels interleaved so any prefix stays balanced. The binomial standard
# error they leave (`accuracy_stderr`) at accuracy 0.5 / 0.7 / 0.9: qa 3.5 / 3.2 / 2.1 points,
# math and code 5.0 / 4.6 / 3.0 points; a drop of about twice that between two cells is real.
DEFAULT_TEST_LIMIT = {"qa": 200, "math": 100, "code": 100}


@dataclass(frozen=True)
class Suite:
    seed: int
    world: qa.World
    items: dict[str, dict[str, list[Item]]]   # category -> split -> items

    def rows(self, category: str, split: str) -> list[dict]:
        if category not in self.items or split not in SPLITS:
            raise KeyError(f"unknown {category}/{split}: categories {CATEGORIES}, splits {SPLITS}")
        return [it.row for it in self.items[category][split]]


def build_suite(seed: int = DEFAULT_SEED) -> Suite:
    """All three categories for one seed (deterministic; about 5 s on one CPU core)."""
    world, qa_splits = qa.generate(seed)
    items = {"qa": qa_splits, "math": math_problems.generate(seed),
             "code": code_problems.generate(seed)}
    return Suite(seed=seed, world=world, items=items)


@functools.cache
def shared_suite(seed: int = DEFAULT_SEED) -> Suite:
    """`build_suite(seed)`, built once per process and shared (read it, never change it): the
    embedded tasks and the embedded calibration text of one evaluation read the same items, and
    building them twice cost a large part of a CPU `eval` run."""
    return build_suite(seed)


def write_suite(out_dir: str | Path, seed: int = DEFAULT_SEED, suite: Suite | None = None) -> list[Path]:
    """Write `{category}_{split}.jsonl` for every category and split; returns the paths."""
    suite = suite or build_suite(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for category in CATEGORIES:
        for split in SPLITS:
            path = out / f"{category}_{split}.jsonl"
            with path.open("w", encoding="utf-8", newline="\n") as f:
                for row in suite.rows(category, split):
                    f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            paths.append(path)
    log.info("wrote %d files to %s", len(paths), out)
    return paths


def accuracy_stderr(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n items: sqrt(p (1 - p) / n)."""
    if n <= 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n > 0 and 0 <= p <= 1, got p={p}, n={n}")
    return math.sqrt(p * (1.0 - p) / n)
