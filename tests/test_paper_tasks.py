"""The paper's lm-eval tasks on real benchmark items (shared/data/benchmarks via DLLMQ_DATA_DIR).

Prompts: our tasks and lm-eval's own tasks are fed the same local docs in the Hub's schema (for
lm-eval's, `datasets.load_dataset` answers from the same files) and must give identical request
arguments. Conversion: the rendered prompts must say what the source files say. Scoring: the
canonical HumanEval solutions and MBPP reference programs pass, wrong ones fail.
"""

from __future__ import annotations

import bz2
import copy
import csv
import functools
import gzip
import importlib.util
import json
import os
import time
import types
from pathlib import Path

import datasets
import evaluate
import lm_eval
import pytest
from dllmq.tasks.lm_eval import (
    LocalDataError,
    UnknownTaskError,
    load_tasks,
    local_data,
    paper_task_names,
    paper_task_settings,
    resolve_data_dir,
    task_dir,
    task_manager,
)
from dllmq.tasks.lm_eval.code import (
    humaneval_programs,
    pass_at_1,
    pass_at_k,
    run_many,
    run_tests,
)
from dllmq.tasks.lm_eval.paper_task import PaperTask
from dllmq.tasks.lm_eval.settings import TaskSettings
from lm_eval.api.model import LM

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DLLMQ_DATA_DIR") or REPO.parent / "shared/data/benchmarks")
pytestmark = pytest.mark.skipif(
    not (DATA_DIR / "arc_easy.jsonl").is_file(),
    reason=f"real benchmark files not found in {DATA_DIR} (set DLLMQ_DATA_DIR)")

N_DOCS = 24  # docs kept per split for the task objects (HellaSwag maps its docs thrice)
LIMIT = 5    # docs whose requests are compared
SEED = 1234  # lm-eval's default fewshot_random_seed
HUB_SPLITS = ("train", "validation", "test")
LM_EVAL_TASKS = Path(__import__("lm_eval.tasks").tasks.__file__).parent


def _hub_from_local(path, name=None, **kwargs):
    """`datasets.load_dataset` answered from the local files (empty splits where they lack one)."""
    local = local_data.local_dataset(path, name, DATA_DIR)
    empty = next(iter(local.values())).select([])
    return datasets.DatasetDict({s: local.get(s, empty) for s in sorted({*local, *HUB_SPLITS})})


@pytest.fixture(scope="module")
def small_readers():
    """Readers cut to the first N_DOCS docs of each split (fast task objects, same real items)."""
    def cut(reader):
        @functools.cache
        def first_docs(data_dir, name):
            return {s: rows[:N_DOCS] for s, rows in reader(data_dir, name).items()}

        return lambda data_dir, name: copy.deepcopy(first_docs(data_dir, name))

    with pytest.MonkeyPatch.context() as mp:
        for path, reader in list(local_data.READERS.items()):
            mp.setitem(local_data.READERS, path, cut(reader))
        yield


@pytest.fixture(scope="module")
def tm(small_readers):
    """One manager for ours and lm-eval's tasks; lm-eval's Hub loads answered from local files."""
    code_eval = types.SimpleNamespace(compute=lambda **kw: ({"pass@1": 0.0}, {}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "load_dataset", _hub_from_local)
        # lm-eval's humaneval/mbpp utils load evaluate's code_eval (a download) on import;
        # their metric is not what is compared here, only their prompts.
        mp.setattr(evaluate, "load", lambda name, *a, **k: code_eval)
        yield task_manager(data_dir=DATA_DIR, include_defaults=False)


_LOADED: dict[tuple, dict] = {}


def _ours(tm, paper_task: str, subtask: str):
    """Our task object (each paper task built once per manager: MMLU builds 57 subtasks)."""
    key = (id(tm), paper_task)
    if key not in _LOADED:
        _LOADED[key] = tm.load([paper_task])["tasks"]
    task = _LOADED[key][subtask]
    assert isinstance(task, PaperTask)
    return task


def _lm_evals(tm, name: str, settings):
    """lm-eval's own task as `--num_fewshot N --gen_kwargs max_gen_toks=L` would run it."""
    spec = name if name in tm.all_tasks else str(LM_EVAL_TASKS / name)
    (task,) = tm.load([spec])["tasks"].values()
    assert not isinstance(task, PaperTask)
    task.set_config("num_fewshot", settings.num_fewshot)
    if settings.gen_length is not None:
        task.set_config("generation_kwargs", {"max_gen_toks": settings.gen_length}, update=True)
    return task


def _requests(task) -> list[tuple]:
    task.set_fewshot_seed(SEED)
    task.build_all_requests(limit=LIMIT, rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.request_type, i.arguments) for i in task.instances]


CASES = [  # (paper task, its lm-eval subtask, lm-eval's own task name or yaml path)
    ("paper_arc_easy", "arc_easy", "arc_easy"),
    ("paper_arc_challenge", "arc_challenge", "arc_challenge"),
    ("paper_piqa", "piqa", "piqa"),
    ("paper_hellaswag", "hellaswag", "hellaswag"),
    ("paper_winogrande", "winogrande", "winogrande"),
    ("paper_mmlu", "mmlu_anatomy", "mmlu_anatomy"),
    ("paper_gsm8k", "gsm8k", "gsm8k"),
    pytest.param("paper_math500", "minerva_math500", "minerva_math500", marks=pytest.mark.skipif(
        importlib.util.find_spec("math_verify") is None,
        reason="lm-eval's minerva_math needs lm-eval[math] (math_verify, antlr4 4.11)")),
    ("paper_humaneval", "paper_humaneval", "humaneval/humaneval.yaml"),
    ("paper_mbpp", "paper_mbpp", "mbpp/mbpp.yaml"),
]


@pytest.mark.parametrize(("paper_task", "subtask", "theirs"), CASES)
def test_prompts_equal_lm_evals_own(tm, paper_task, subtask, theirs):
    ours = _ours(tm, paper_task, subtask)
    settings = paper_task_settings(paper_task)
    assert ours.config.num_fewshot == settings.num_fewshot
    mine, reference = _requests(ours), _requests(_lm_evals(tm, theirs, settings))
    assert len(mine) >= LIMIT
    assert mine == reference
    if settings.gen_length is not None:
        assert all(args[1]["max_gen_toks"] == settings.gen_length for *_, args in mine)


def test_fewshot_contexts_hold_the_papers_shots(tm):
    """GSM8K 4 shots (lm-eval's default is 5), MMLU 5, MBPP 3: count them in the context."""
    gsm8k = _requests(_ours(tm, "paper_gsm8k", "gsm8k"))
    assert gsm8k[0][3][0].count("Question:") == 4 + 1
    mmlu = _requests(_ours(tm, "paper_mmlu", "mmlu_abstract_algebra"))
    assert all(req[3][0].count("\nAnswer:") == 5 + 1 for req in mmlu)
    mbpp = _requests(_ours(tm, "paper_mbpp", "paper_mbpp"))
    context = mbpp[0][3][0]
    assert context.count("[BEGIN]") == 3 + 1 and context.count("[DONE]") == 3
    assert "def similar_elements" in context  # MBPP task 2, lm-eval's first shot


def _raw_jsonl(name: str) -> list[dict]:
    with open(DATA_DIR / name, encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(LIMIT)]


def _choices(requests, doc_id):
    return [args for d, _, _, args in requests if d == doc_id]


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge"])
def test_arc_prompts_say_what_the_file_says(tm, name):
    task = _ours(tm, f"paper_{name}", name)
    requests = _requests(task)
    for doc_id, row in enumerate(_raw_jsonl(f"{name}.jsonl")):
        args = _choices(requests, doc_id)
        assert [ctx for ctx, _ in args] == [row["query"] + "\nAnswer:"] * len(row["choices"])
        assert [cont for _, cont in args] == [" " + c for c in row["choices"]]
        assert task.doc_to_target(task.eval_docs[doc_id]) == row["gold"]


def test_winogrande_prompts_say_what_the_file_says(tm):
    task = _ours(tm, "paper_winogrande", "winogrande")
    requests = _requests(task)
    for doc_id, row in enumerate(_raw_jsonl("winogrande.jsonl")):
        assert _choices(requests, doc_id) == [(c, " " + row["continuation"])
                                              for c in row["context_options"]]
        assert task.doc_to_text(task.eval_docs[doc_id]) == row["gold"]  # the gold context


def test_hellaswag_and_piqa_prompts_say_what_the_files_say(tm):
    with bz2.open(DATA_DIR / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as fh:
        lines = [next(fh).rstrip("\n") for _ in range(6 * LIMIT)]
    task = _ours(tm, "paper_hellaswag", "hellaswag")
    requests = _requests(task)
    for doc_id in range(LIMIT):
        item = lines[6 * doc_id: 6 * doc_id + 6]
        args = _choices(requests, doc_id)
        # lm-eval capitalises ctx_b (the fragment after the last sentence); nothing else changes
        assert args[0][0].lower() == item[0].lower() and args[0][0] != item[0]
        assert [cont for _, cont in args] == [" " + e for e in item[2:]]
        assert task.doc_to_target(task.eval_docs[doc_id]) == int(item[1])
    labels = (DATA_DIR / "piqa_valid_labels.lst").read_text().split()
    task = _ours(tm, "paper_piqa", "piqa")
    requests = _requests(task)
    for doc_id, row in enumerate(_raw_jsonl("piqa_valid.jsonl")):
        assert _choices(requests, doc_id) == [(f"Question: {row['goal']}\nAnswer:", " " + s)
                                              for s in (row["sol1"], row["sol2"])]
        assert task.doc_to_target(task.eval_docs[doc_id]) == int(labels[doc_id])


def test_mmlu_targets_follow_the_csv(tm):
    task = _ours(tm, "paper_mmlu", "mmlu_anatomy")
    with open(DATA_DIR / "mmlu/test/anatomy_test.csv", encoding="utf-8", newline="") as fh:
        rows = [row for row, _ in zip(csv.reader(fh), range(LIMIT), strict=False)]
    for doc, row in zip(task.eval_docs, rows, strict=False):
        assert doc["question"] == row[0]
        assert task.doc_to_choice(doc)[task.doc_to_target(doc)] == row[5]


def test_mbpp_splits_follow_the_hub():
    docs = local_data.read_mbpp(DATA_DIR, "full")
    assert {s: len(v) for s, v in docs.items()} == {"prompt": 10, "test": 500,
                                                    "validation": 90, "train": 374}
    assert [d["task_id"] for d in docs["test"][:2]] == [11, 12]


# ---------------------------------------------------------------------------------- scoring

def _humaneval_rows() -> list[dict]:
    with gzip.open(DATA_DIR / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_humaneval_canonical_solutions_all_pass():
    rows = _humaneval_rows()
    assert len(rows) == 164
    programs = [humaneval_programs([[r["canonical_solution"]]], [r])[0][0]
                + f"\n{r['test']}\ncheck({r['entry_point']})" for r in rows]
    start = time.perf_counter()
    passed = run_many(programs, timeout=10.0)
    assert sum(passed) == 164, [r["task_id"] for r, ok in zip(rows, passed, strict=True) if not ok]
    assert time.perf_counter() - start < 40


def test_scoring_through_the_tasks(tm):
    """process_results as lm-eval calls it: canonical/reference code 1.0, wrong code 0.0."""
    task = _ours(tm, "paper_humaneval", "paper_humaneval")
    for doc in list(task.eval_docs)[:3]:
        good = task.process_results(doc, humaneval_programs([[doc["canonical_solution"]]], [doc]))
        bad = task.process_results(doc, humaneval_programs([["    return None\n"]], [doc]))
        assert (good, bad) == ({"pass@1": 1.0}, {"pass@1": 0.0})
    task = _ours(tm, "paper_mbpp", "paper_mbpp")
    for doc in list(task.eval_docs)[:LIMIT]:
        assert task.process_results(doc, [doc["code"]]) == {"pass_at_1": 1.0}
        wrong = doc["code"].replace("return", "return None and", 1)
        assert task.process_results(doc, [wrong]) == {"pass_at_1": 0.0}


def test_metric_functions_average_over_problems():
    refs = ["assert f() == 1", "assert f() == 2"]
    good, bad = "def f():\n    return 1", "def f():\n    return 2"
    assert pass_at_k(refs, [[good], [good]], k=[1]) == {"pass@1": 0.5}
    assert pass_at_1(refs, [good, bad]) == 1.0
    assert pass_at_1(refs[0], good) == 1.0
    with pytest.raises(ValueError, match="k=\\[1\\]"):
        pass_at_k(refs, [[good], [good]], k=[1, 10])


def test_run_tests_times_out_and_stays_in_its_directory(tmp_path):
    start = time.perf_counter()
    assert not run_tests("while True:\n    pass", timeout=0.5)
    assert time.perf_counter() - start < 5
    assert not run_tests("raise SystemExit(3)", timeout=5)
    assert run_tests("import os\nopen('x.txt', 'w').write('1')\nassert os.listdir('.')", 5)
    assert not (Path.cwd() / "x.txt").exists()


# ------------------------------------------------------------------------- settings and errors

def test_every_paper_task_has_a_task_file_and_settings():
    names = set()
    for path in (task_dir() / "paper").glob("*.yaml"):
        head = path.read_text()
        names |= {line.split(":", 1)[1].strip() for line in head.splitlines()
                  if line.startswith(("group:", "task: paper_"))}
    assert names == set(paper_task_names())
    assert paper_task_settings("mmlu_anatomy").mc_num == 1
    assert paper_task_settings("arc_easy").mc_num == 128
    gsm8k = paper_task_settings("gsm8k")
    assert (gsm8k.gen_length, gsm8k.steps, gsm8k.block_length) == (256, 256, 32)
    assert paper_task_settings("minerva_math_algebra").block_length == 64
    assert paper_task_settings("humaneval").output_type == "generate_until"
    assert paper_task_settings("mbpp").model_settings() == {"gen_length": 512, "steps": 512,
                                                            "block_length": 32}
    assert paper_task_settings("piqa").model_settings() == {"mc_num": 128}
    # Dream: the paper's 128 new tokens and top-p 0.95 for every generation task, no blocks
    assert paper_task_settings("mbpp").model_settings("Dream") == {"gen_length": 128,
                                                                   "top_p": 0.95}
    assert paper_task_settings("piqa").model_settings("Dream") == {"mc_num": 128}


@pytest.mark.parametrize("bad", [
    {"mc_num": 8, "gen_length": 256, "steps": 256, "block_length": 32},  # both kinds
    {"gen_length": 256, "steps": 256},                                    # block missing
    {"gen_length": 100, "steps": 100, "block_length": 32},                # not a multiple
    {"gen_length": 256, "steps": 100, "block_length": 32},                # steps per block
    {"mc_num": 0},
])
def test_settings_validate_themselves(bad):
    with pytest.raises(ValueError, match="^x: "):
        TaskSettings(task="x", lm_eval="x", num_fewshot=0, **bad)


def test_unknown_task_is_one_clear_line(tm):
    with pytest.raises(UnknownTaskError) as err:
        load_tasks(["paper_gsm8kk"], manager=tm)
    assert "\n" not in str(err.value) and "did you mean paper_gsm8k" in str(err.value)
    with pytest.raises(UnknownTaskError, match="^no paper settings for task 'gsm8kk'.*gsm8k"):
        paper_task_settings("gsm8kk")


def test_missing_local_file_is_one_clear_line(tmp_path):
    (tmp_path / "arc_easy.jsonl").write_text((DATA_DIR / "arc_easy.jsonl").read_text())
    manager = task_manager(data_dir=tmp_path, include_defaults=False)
    docs = manager.load(["paper_arc_easy"])["tasks"]["arc_easy"].eval_docs
    assert "Question: " + docs[0]["question"] == _raw_jsonl("arc_easy.jsonl")[0]["query"]
    with pytest.raises(LocalDataError) as err:
        manager.load(["paper_arc_challenge"])
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "arc_challenge.jsonl") in message
    with pytest.raises(LocalDataError, match="does not exist"):
        task_manager(data_dir=tmp_path / "nowhere")


def test_without_a_data_dir_the_hub_is_asked(monkeypatch, small_readers):
    monkeypatch.delenv("DLLMQ_DATA_DIR", raising=False)
    asked = []

    def hub(path, name=None, **kwargs):
        asked.append((path, name))
        return _hub_from_local(path, name)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    manager = task_manager(include_defaults=False)
    assert manager.load(["paper_arc_easy"])["tasks"]["arc_easy"].eval_docs[0]["answerKey"] == "A"
    assert asked == [("allenai/ai2_arc", "ARC-Easy")]
    monkeypatch.setenv("DLLMQ_DATA_DIR", str(DATA_DIR))
    assert resolve_data_dir() == DATA_DIR
    with pytest.raises(LocalDataError, match="/elsewhere"):  # metadata wins over the env
        resolve_data_dir({"dllmq_data_dir": "/elsewhere"})


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None,
                    reason="lm-eval's minerva_math needs lm-eval[math] (math_verify, antlr4 4.11)")
def test_paper_math_is_minervas_seven_subjects_zero_shot(tmp_path):
    """MATH's files are not in shared/data: two made-up problems per subject in the documented
    layout (hendrycks_math/SUBJECT_test.jsonl) stand in for them."""
    subjects = {"algebra": "algebra", "counting_and_prob": "counting_and_probability",
                "geometry": "geometry", "intermediate_algebra": "intermediate_algebra",
                "num_theory": "number_theory", "prealgebra": "prealgebra",
                "precalc": "precalculus"}  # task suffix -> Hub config (the file's name)
    (tmp_path / "hendrycks_math").mkdir()
    for s in subjects.values():
        rows = [{"problem": f"What is {i} + 1?", "level": "Level 1", "type": s,
                 "solution": f"It is $\\boxed{{{i + 1}}}$."} for i in range(2)]
        (tmp_path / f"hendrycks_math/{s}_test.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    loaded = task_manager(data_dir=tmp_path, include_defaults=False).load(["paper_math"])
    assert sorted(loaded["tasks"]) == sorted(f"minerva_math_{s}" for s in subjects)
    task = loaded["tasks"]["minerva_math_algebra"]
    assert task.config.num_fewshot == 0
    (request,) = _requests(task)[:1]
    assert request[3][0] == "Problem:\nWhat is 0 + 1?\n\nSolution:"
    assert request[3][1]["max_gen_toks"] == 256
    assert task.doc_to_target(task.eval_docs[1]) == "2"


class Oracle(LM):
    """Answers every item right: the gold choice, GSM8K's reference answer, the canonical code."""

    def loglikelihood(self, requests):
        def right(doc, continuation):
            gold = doc["choices"]["text"][doc["choices"]["label"].index(doc["answerKey"])]
            return continuation == " " + gold

        return [(0.0 if right(r.doc, r.args[1]) else -9.0, False) for r in requests]

    def generate_until(self, requests):
        return [r.doc["canonical_solution"] if "canonical_solution" in r.doc
                else " " + r.doc["answer"] for r in requests]

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def test_oracle_scores_full_marks_through_simple_evaluate(tm):
    """The whole lm-eval path (requests, filters, metrics, aggregation) on the paper tasks."""
    res = lm_eval.simple_evaluate(model=Oracle(), tasks=["paper_arc_easy", "paper_gsm8k",
                                  "paper_humaneval"], task_manager=tm, limit=4,
                                  confirm_run_unsafe_code=True)
    results = res["results"]
    assert results["arc_easy"]["acc,none"] == 1.0
    assert results["gsm8k"]["exact_match,strict-match"] == 1.0
    assert results["paper_humaneval"]["pass@1,create_test"] == 1.0
    assert res["configs"]["gsm8k"]["num_fewshot"] == 4


def test_dream_cells_of_paper_generation_tasks_validate(tmp_path):
    """The paper's GSM8K settings carry LLaDA's block_length; a Dream cell gets them without it
    (validation used to refuse every Dream generation cell of the paper preset)."""
    import yaml
    from dllmq.sweep import load_grid, validate

    from evalkit import make_model_dir

    dream = make_model_dir(tmp_path / "tiny-dream", "Dream", max_position=2048)
    grid = {"store": "r.sqlite", "models": [str(dream)], "recipes": ["fp16"], "seeds": [0],
            "tasks": [{"task": "paper_gsm8k", "settings": {"gen_length": 32, "steps": 32}}],
            "settings": {"limit": 2}, "include_defaults": False, "data_dir": str(DATA_DIR),
            "device": "cpu"}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    validate(load_grid(tmp_path / "grid.yaml"), task_manager(data_dir=DATA_DIR, include_defaults=False))
