"""The training corpus of the shipped tiny models: the suite's train splits plus real text.

Pretraining documents: the generated world's facts (as stated, then restated in varied words
and orders), the train-split QA questions with their
answers, the worked train-split math problems, the train-split code functions, and a
deterministic subset of the Python standard library's own source (real text every machine
has, read from `sysconfig.get_paths()['stdlib']`). SFT pairs are instruction-style versions of
the same train items (the instruct model's supervised fine-tuning data, as LLaDA's SFT).
Nothing from a few-shot or test split enters the corpus.

The stdlib part depends on the Python version that reads it (`Corpus.python_version` records it).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .qa import fact_variants
from .suite import DEFAULT_SEED, Suite, build_suite

log = logging.getLogger(__name__)

STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter",
               "turtledemo", "lib2to3", "ensurepip", "pydoc_data", "encodings", "__pycache__"}
QA_FORMAT = "Question: {question}\nAnswer: {answer}"


@dataclass(frozen=True)
class Corpus:
    """`pretrain`: documents (grouped by `sources`, a name -> (start, stop) range into it);
    `sft`: (prompt, response) pairs, the prompt a user turn, the response the assistant's."""

    seed: int
    pretrain: tuple[str, ...]
    sources: dict[str, tuple[int, int]]
    sft: tuple[tuple[str, str], ...]
    python_version: str

    def source(self, name: str) -> tuple[str, ...]:
        start, stop = self.sources[name]
        return self.pretrain[start:stop]


def qa_text(row: dict) -> str:
    """A QA item with its correct choice, as the corpus states it (and as likelihood scores it)."""
    return QA_FORMAT.format(question=row["question"], answer=row["choices"][row["gold"]])


def math_text(row: dict) -> str:
    return QA_FORMAT.format(question=row["question"], answer=row["answer"])


def code_text(row: dict) -> str:
    return row["prompt"] + row["canonical_solution"]


def sft_pairs(suite: Suite) -> list[tuple[str, str]]:
    """Instruction-style pairs from the train splits: the question (or the function to complete)
    as the user turn, the answer (or the function body) as the assistant turn."""
    pairs = [(r["question"], r["choices"][r["gold"]]) for r in suite.rows("qa", "train")]
    pairs += [(r["question"], r["answer"]) for r in suite.rows("math", "train")]
    pairs += [("Complete the function.\n" + r["prompt"], r["canonical_solution"])
              for r in suite.rows("code", "train")]
    return pairs


def stdlib_files(seed: int, max_chars: int, root: str | Path | None = None) -> list[Path]:
    """A seeded, deterministic subset of the stdlib's .py files (tests, GUI and vendored
    packages skipped), about max_chars in all, returned sorted by path."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in root.rglob("*.py")
                   if not STDLIB_SKIP & set(f.relative_to(root).parts[:-1])
                   and not f.name.startswith("test_"))
    if not files:
        raise FileNotFoundError(f"no Python sources under {root}; pass root= a stdlib directory")
    ranked = sorted(files, key=lambda f: hashlib.sha256(
        f"{seed}:{f.relative_to(root).as_posix()}".encode()).hexdigest())
    chosen, total = [], 0
    for f in ranked:
        if total >= max_chars:
            break
        chosen.append(f)
        total += f.stat().st_size
    return sorted(chosen)


def chunk(text: str, max_chars: int) -> list[str]:
    """Split at line boundaries into pieces of at most max_chars (a longer line is cut)."""
    out, cur = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            out.append(line[:max_chars])
            line = line[max_chars:]
        if len(cur) + len(line) > max_chars and cur:
            out.append(cur)
            cur = ""
        cur += line
    if cur.strip():
        out.append(cur)
    return [c for c in out if c.strip()]


def build_corpus(seed: int = DEFAULT_SEED, stdlib_chars: int = 2_000_000, chunk_chars: int = 1500,
                 fact_variants_per_entity: int = 4, suite: Suite | None = None,
                 stdlib_root: str | Path | None = None) -> Corpus:
    """The corpus for one seed: same seed and Python version, same documents in the same order.
    The groups differ in size by orders of magnitude (math ~1.5M tokens, facts ~40k): a trainer
    should sample by source (`Corpus.source`) with its own weights, not uniformly by document."""
    suite = suite or build_suite(seed)
    groups = {
        "facts": suite.world.facts() + fact_variants(suite.world, seed, fact_variants_per_entity),
        "qa": [qa_text(r) for r in suite.rows("qa", "train")],
        "math": [math_text(r) for r in suite.rows("math", "train")],
        "code": [code_text(r) for r in suite.rows("code", "train")],
        "stdlib": [c for f in stdlib_files(seed, stdlib_chars, stdlib_root)
                   for c in chunk(f.read_text(encoding="utf-8", errors="replace"), chunk_chars)],
    }
    pretrain: list[str] = []
    sources = {}
    for name, docs in groups.items():
        sources[name] = (len(pretrain), len(pretrain) + len(docs))
        pretrain += docs
    log.info("corpus seed %d: %s", seed, {k: b - a for k, (a, b) in sources.items()})
    return Corpus(seed=seed, pretrain=tuple(pretrain), sources=sources,
                  sft=tuple(sft_pairs(suite)), python_version=platform.python_version())
