"""Findings judged from paired per-item scores, on synthetic results stores where the right
verdict is known."""

import numpy as np
import pandas as pd
import pytest
from dllmq.findings import findings_markdown, judge
from dllmq.store import Cell, Store
from dllmq.study import average_seeds, result_rows

CATS = {"qa_task": "qa", "math_task": "math", "code_task": "code"}
METRICS = {"qa_task": "acc", "math_task": "exact_match", "code_task": "pass@1"}
ROLES = {"llada_base": "base", "llada_instruct": "inst"}


def _quantized(fp: np.ndarray, drop_pct: float, rng) -> np.ndarray:
    """A quantized copy of FP scores whose accuracy is exactly drop_pct % lower (relative):
    some correct items turn wrong, and 3 % of the items swap both ways (noise that a paired
    comparison sees)."""
    n = len(fp)
    q = fp.copy()
    right, wrong = np.flatnonzero(fp == 1), np.flatnonzero(fp == 0)
    lose = round(fp.sum() * drop_pct / 100)
    swap = min(len(wrong), round(0.03 * n))
    q[rng.choice(right, lose + swap, replace=False)] = 0
    q[rng.choice(wrong, swap, replace=False)] = 1
    return q


def _store(tmp_path, plan: dict[str, dict[str, float]], n: int = 500, seed: int = 0) -> Store:
    """plan: recipe -> category -> true relative drop (%) for both models."""
    rng = np.random.default_rng(seed)
    store = Store(tmp_path / "synthetic.sqlite")
    for model in ("base", "inst"):
        for task, cat in CATS.items():
            base_acc = {"qa": 0.7, "math": 0.6, "code": 0.5}[cat]
            fp = np.zeros(n)
            fp[rng.choice(n, round(base_acc * n), replace=False)] = 1
            for recipe, drops in plan.items():
                x = fp if recipe == "fp16" else _quantized(fp, drops[cat], rng)
                name = METRICS[task]
                samples = [{"doc_id": i, "filter": "none", name: float(v), "doc_hash": str(i)}
                           for i, v in enumerate(x)]
                store.put(Cell(model, recipe, task, {"limit": n}), {f"{name},none": (x.mean(), None)}, samples)
    return store


def _frame(store: Store) -> pd.DataFrame:
    rows = []
    for model, role in (("base", "llada_base"), ("inst", "llada_instruct")):
        rows += result_rows(store, store.results(model=model), role, CATS, METRICS)
    return average_seeds(pd.DataFrame(rows), ["model", "role", "recipe", "task", "category", "metric"])


PLAN = {"fp16": {"qa": 0, "math": 0, "code": 0},
        "w4a16g128-gptq": {"qa": 0, "math": 0, "code": 0},
        "w4a16g128-awq": {"qa": 0, "math": 0, "code": 0},
        "w3a16g128-gptq": {"qa": 10, "math": 10, "code": 10},
        "w3a16g128-awq": {"qa": 10, "math": 10, "code": 10}}


def test_known_drops_are_decided_from_a_store(tmp_path):
    df = _frame(_store(tmp_path, PLAN))
    f = {x.key: x for x in judge(df, CATS, ROLES)}
    f1 = f["F1"]
    w4 = [c for c in f1.checks if "w4a16" in c.what]
    w3 = [c for c in f1.checks if "w3a16" in c.what]
    assert len(w4) == 8 and len(w3) == 8
    # a 0 % drop on 500 items is near-lossless, a true 10 % drop is significant: every sub-claim decided
    assert all(c.verdict == "holds" for c in w4), [c.line() for c in w4]
    assert all(c.verdict == "holds" for c in w3), [c.line() for c in w3]
    assert f1.verdict == "holds"
    for c in w3:
        assert c.value == pytest.approx(10.0) and c.se < 3.2  # paired; unpaired would be ~4-6
    md = findings_markdown(list(f.values()))
    assert "| finding | claim | verdict | sub-claims (holds / fails / noise) |" in md
    assert "| F1 | Weight-only: 4-bit near-lossless on QA and math; 3-bit drops significantly, most on math and code | **holds** | 16 / 0 / 0 |" in md


def test_too_few_items_stay_within_noise(tmp_path):
    df = _frame(_store(tmp_path, {"fp16": PLAN["fp16"], "w3a16g128-gptq": {"qa": 10, "math": 10, "code": 10}}, n=30))
    f1 = {x.key: x for x in judge(df, CATS, ROLES)}["F1"]
    assert any(c.verdict == "within noise" for c in f1.checks)


def test_a_cell_without_per_item_samples_is_an_error(tmp_path):
    store = _store(tmp_path, {"fp16": PLAN["fp16"], "w4a16g128-gptq": PLAN["w4a16g128-gptq"]}, n=20)
    store.put(Cell("base", "w3a16g128-gptq", "qa_task", {"limit": 20}), {"acc,none": (0.5, 0.1)}, samples=[])
    with pytest.raises(ValueError, match="no per-item samples"):
        _frame(store)


def test_markdown_lists_every_finding_and_unmeasured_ones(tmp_path):
    df = _frame(_store(tmp_path, {"fp16": PLAN["fp16"], "w4a16g128-gptq": PLAN["w4a16g128-gptq"]}, n=40))
    md = findings_markdown(judge(df[df.model == "base"], CATS, {"llada_base": "base"}))
    for k in [f"F{i}" for i in range(9)]:
        assert f"| {k} |" in md
    assert "not measured" in md
