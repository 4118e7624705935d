"""The embedded suite's lm-eval tasks (dllmq_qa, dllmq_math, dllmq_code) on small JSONL files
written in the generator's schema: prompts, few-shot contexts, and scores through
`lm_eval.simple_evaluate` with a stand-in model whose right answers are known."""

from __future__ import annotations

import json

import lm_eval
import pytest
from dllmq.tasks.lm_eval import task_manager
from dllmq.tasks.lm_eval.embedded import EmbeddedDataError
from lm_eval.api.model import LM

QA = {
    "train": [{"id": "qa/train/0", "question": "Where does Tam live?", "choices": ["Ost", "Bel"],
               "gold": 0, "difficulty": 1}],
    "fewshot": [{"id": f"qa/fewshot/{i}", "question": f"What pet does P{i} have?",
                 "choices": ["cat", "dog", "owl"], "gold": i, "difficulty": 1} for i in range(3)],
    "test": [{"id": f"qa/test/{i}", "question": f"Which country is T{i} in?",
              "choices": ["Veland", "Orrin", "Sal", "Mosk"], "gold": i % 4, "difficulty": d}
             for i, d in enumerate([1, 2, 1, 1, 2])],
}
MATH = {
    split: [{"id": f"math/{split}/{i}", "question": f"Ana has {i + 3} pens. She buys 2 more. "
             "How many pens does Ana have now?", "answer": f"{i + 3} + 2 = {i + 5}\n#### {i + 5}",
             "target": str(i + 5), "difficulty": d} for i, d in enumerate(diffs)]
    for split, diffs in (("train", [1]), ("fewshot", [1, 1]), ("test", [1, 2, 2, 1]))
}
_BODIES = [("add_two", "x", "    return x + 2\n", "assert candidate(1) == 3"),
           ("double", "x", "    return 2 * x\n", "assert candidate(4) == 8"),
           ("last", "xs", "    return xs[-1]\n", "assert candidate([1, 5]) == 5")]
CODE = {
    split: [{"id": f"code/{split}/{i}", "entry_point": name,
             "prompt": f'def {name}({arg}):\n    """Do {name}."""\n', "canonical_solution": body,
             "test": f"def check(candidate):\n    {test}\n", "difficulty": 1 + i % 2}
            for i, (name, arg, body, test) in enumerate(_BODIES[:n])]
    for split, n in (("train", 1), ("fewshot", 1), ("test", 3))
}


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    for category, splits in (("qa", QA), ("math", MATH), ("code", CODE)):
        for split, rows in splits.items():
            (root / f"{category}_{split}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tm(suite_dir):
    return task_manager(metadata={"dllmq_embedded_dir": str(suite_dir)}, include_defaults=False)


def _requests(task, num_fewshot: int):
    task.set_config("num_fewshot", num_fewshot)
    task.set_fewshot_seed(0)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return task.instances


def test_qa_prompts_and_fewshot_context(tm):
    (task,) = tm.load(["dllmq_qa"])["tasks"].values()
    requests = _requests(task, 2)
    shots = "".join(f"Question: {d['question']}\nAnswer: {d['choices'][d['gold']]}\n\n"
                    for d in QA["fewshot"][:2])
    first = [r.args for r in requests if r.doc_id == 0]
    doc = QA["test"][0]
    assert first == [(shots + f"Question: {doc['question']}\nAnswer:", " " + c)
                     for c in doc["choices"]]
    assert len(requests) == sum(len(d["choices"]) for d in QA["test"])


def test_math_and_code_prompts(tm):
    tasks = tm.load(["dllmq_math", "dllmq_code"])["tasks"]
    math = _requests(tasks["dllmq_math"], 1)
    doc, shot = MATH["test"][0], MATH["fewshot"][0]
    assert math[0].args[0] == (f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n"
                               f"Question: {doc['question']}\nAnswer:")
    assert math[0].args[1]["until"] == ["Question:", "\n\n"]
    code = _requests(tasks["dllmq_code"], 0)
    assert [r.args[0] for r in code] == [d["prompt"] for d in CODE["test"]]


class KnowsEasyItems(LM):
    """Answers difficulty-1 items right and every other item wrong."""

    def loglikelihood(self, requests):
        out = []
        for r in requests:
            doc, (_, continuation) = r.doc, r.args
            right = continuation == " " + doc["choices"][doc["gold"]]
            out.append((0.0 if right == (doc["difficulty"] == 1) else -9.0, False))
        return out

    def generate_until(self, requests):
        out = []
        for r in requests:
            doc, easy = r.doc, r.doc["difficulty"] == 1
            if "entry_point" in doc:
                out.append(doc["canonical_solution"] if easy else "    return None\n")
            else:
                n = int(doc["target"]) if easy else int(doc["target"]) + 1
                out.append(f" {doc['answer'].splitlines()[0]}\n#### {n}\nQuestion: more")
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def test_scores_through_simple_evaluate(tm):
    res = lm_eval.simple_evaluate(model=KnowsEasyItems(), tasks=["dllmq_qa", "dllmq_math",
                                  "dllmq_code"], task_manager=tm, confirm_run_unsafe_code=True)
    results = res["results"]

    def easy(rows):
        return sum(r["difficulty"] == 1 for r in rows) / len(rows)

    assert results["dllmq_qa"]["acc,none"] == pytest.approx(easy(QA["test"]))
    assert results["dllmq_math"]["exact_match,strict-match"] == pytest.approx(easy(MATH["test"]))
    assert results["dllmq_code"]["pass@1,create_test"] == pytest.approx(easy(CODE["test"]))


def test_missing_or_malformed_file_is_one_clear_line(tmp_path):
    manager = task_manager(metadata={"dllmq_embedded_dir": str(tmp_path)}, include_defaults=False)
    with pytest.raises(EmbeddedDataError) as err:
        manager.load(["dllmq_math"])
    assert "\n" not in str(err.value) and str(tmp_path / "math_train.jsonl") in str(err.value)
    for split in ("train", "fewshot", "test"):
        (tmp_path / f"qa_{split}.jsonl").write_text('{"id": "x", "question": "q"}\n')
    with pytest.raises(EmbeddedDataError, match="row 1 lacks choices, gold, difficulty"):
        manager.load(["dllmq_qa"])


def test_without_a_directory_the_suite_is_generated(monkeypatch):
    suite = pytest.importorskip("dllmq.tasks.suite")
    monkeypatch.delenv("DLLMQ_EMBEDDED_DIR", raising=False)
    manager = task_manager(metadata={"dllmq_embedded_seed": 3}, include_defaults=False)
    (task,) = manager.load(["dllmq_math"])["tasks"].values()
    rows = suite.build_suite(3).rows("math", "test")
    assert list(task.eval_docs) == rows


def test_prompts_are_the_training_corpus_format(tm):
    """What the tiny models were trained on (dllmq.tasks.corpus) is what the tasks score."""
    corpus = pytest.importorskip("dllmq.tasks.corpus")
    tasks = tm.load(["dllmq_qa", "dllmq_math", "dllmq_code"])["tasks"]
    qa = tasks["dllmq_qa"]
    for doc in qa.eval_docs:
        gold = qa.doc_to_choice(doc)[qa.doc_to_target(doc)]
        assert qa.doc_to_text(doc) + qa.config.target_delimiter + gold == corpus.qa_text(doc)
    math = tasks["dllmq_math"]
    for doc in math.eval_docs:
        text = math.doc_to_text(doc) + math.config.target_delimiter + math.doc_to_target(doc)
        assert text == corpus.math_text(doc)
    code = tasks["dllmq_code"]
    for doc in code.eval_docs:
        assert code.doc_to_text(doc) + doc["canonical_solution"] == corpus.code_text(doc)


def test_building_a_task_logs_no_custom_kwargs_warning(tm, caplog):
    """lm-eval's `custom_dataset` hook warned "Custom kwargs can be passed ..." every time a task
    was built (twice per evaluated cell); the embedded tasks read their data without it."""
    import logging

    with caplog.at_level(logging.WARNING):
        tasks = tm.load(["dllmq_qa", "dllmq_math", "dllmq_code"])["tasks"]
    assert {type(t).__name__ for t in tasks.values()} == {"EmbeddedTask"}
    assert len(tasks["dllmq_qa"].test_docs()) == len(QA["test"])
    assert not [r for r in caplog.records if "Custom kwargs" in r.getMessage()]
