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


def test_item_scores_pick_the_metric_and_filter():
    from dllmq.study import item_scores

    samples = [{"doc_id": 0, "filter": "strict-match", "exact_match": 1.0},
               {"doc_id": 0, "filter": "flexible-extract", "exact_match": 0.0},
               {"doc_id": 1, "filter": "strict-match", "exact_match": 0.0}]
    assert item_scores(samples, "exact_match,strict-match", Cell("m", "fp16", "t", seed=3)) == {(0, 3): 1.0, (1, 3): 0.0}
    with pytest.raises(ValueError, match="two per-item records"):
        item_scores(samples + samples[:1], "exact_match,strict-match")


def test_seeds_are_paired_and_a_document_counts_once():
    rows = [dict(model="m", recipe="fp16", task="t", seed=s, scores={(d, s): float((d + s) % 2) for d in range(4)})
            for s in (0, 1)]
    out = average_seeds(pd.DataFrame(rows), ["model", "recipe", "task"])
    assert len(out) == 1 and out.loc[0, "n"] == 4 and out.loc[0, "value"] == 0.5
    assert len(out.loc[0, "scores"]) == 8  # joined later by (document, seed)


def test_full_preset_and_output_dirs(tmp_path, monkeypatch):
    from dllmq import study

    p = study.load_params("full")
    assert p["device"] == "cuda" and p["models"] == study.load_params("default")["models"]
    assert all(t["settings"]["limit"] is None for ts in p["tasks"].values() for t in ts)
    figs, tabs = study.output_dirs({**p, "figures_dir": str(tmp_path / "f"), "tables_dir": str(tmp_path / "t")})
    assert (figs, tabs) == (tmp_path / "f", tmp_path / "t") and figs.is_dir()
    monkeypatch.delenv(study.PAPER_TABLES_ENV, raising=False)
    assert study.paper_table_dir({}) is None  # no default outside the package
    monkeypatch.setenv(study.PAPER_TABLES_ENV, str(tmp_path))
    assert study.paper_table_dir({}) == tmp_path


def test_samples_that_do_not_average_to_the_metric_are_an_error(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    cell = Cell("base", "fp16", "qa_task", {"limit": 2})
    store.put(cell, {"acc,none": (0.5, 0.5)}, [{"doc_id": 0, "filter": "none", "acc": 1.0},
                                                {"doc_id": 1, "filter": "none", "acc": 1.0}])
    with pytest.raises(ValueError, match="do not belong"):
        result_rows(store, store.results(), "llada_base", CATS, METRICS)


def test_rank_is_deterministic(tmp_path):
    from dllmq.report import rank_drops

    df = _frame(_store(tmp_path, {"fp16": PLAN["fp16"], "w3a16g128-gptq": PLAN["w3a16g128-gptq"]}, n=60))
    assert rank_drops(df, ("setting", "method")).equals(rank_drops(df, ("setting", "method")))


def test_equal_methods_are_decided_by_the_margin_and_never_at_zero(tmp_path):
    # GPTQ and AWQ truly equal (0 % drop both): "GPTQ beats AWQ" does not hold with the 4-point
    # margin at 2000 items, and stays within noise against a zero margin at any item count
    plan = {k: PLAN[k] for k in ("fp16", "w4a16g128-gptq", "w4a16g128-awq")}
    df = _frame(_store(tmp_path, plan, n=2000))
    f3 = {x.key: x for x in judge(df, CATS, ROLES)}["F3"]
    w4 = [c for c in f3.checks if "w4a16" in c.what]
    assert w4 and all(c.verdict == "does not hold" for c in w4), [c.line() for c in w4]
    assert all(c.threshold == 4.0 and abs(c.value) < 4.0 for c in w4)
    f3_zero = {x.key: x for x in judge(df, CATS, ROLES, margin=0.0)}["F3"]
    assert all(c.verdict == "within noise" for c in f3_zero.checks if "w4a16" in c.what)


def test_a_method_better_by_more_than_the_margin_beats_the_other(tmp_path):
    plan = {**PLAN, "w3a16g128-gptq": {"qa": 0, "math": 0, "code": 0},
            "w3a16g128-awq": {"qa": 15, "math": 15, "code": 15}}
    df = _frame(_store(tmp_path, plan))
    f3 = {x.key: x for x in judge(df, CATS, ROLES)}["F3"]
    w3 = [c for c in f3.checks if "w3a16" in c.what and "code" not in c.what]
    # the gap is drop(AWQ) - drop(GPTQ) = 15 points of relative drop
    assert w3 and all(c.value == pytest.approx(15.0, abs=0.5) for c in w3)  # (item rounding)
    assert all(c.verdict == "holds" for c in w3), [c.line() for c in w3]
    awq_code = [c for c in f3.checks if "code" in c.what and "drop w3a16g128-gptq - drop w3a16g128-awq" in c.what]
    assert awq_code and all(c.verdict == "does not hold" for c in awq_code)


def test_drop_gap_is_the_difference_of_the_drops(tmp_path):
    from dllmq.report import Numbers
    df = _frame(_store(tmp_path, {**PLAN, "w3a16g128-awq": {"qa": 20, "math": 10, "code": 5}}, n=200))
    n = Numbers(df, CATS)
    for cat in ("qa", "math", "code"):
        gap = n.drop_gap("base", "w3a16g128-awq", "base", "w3a16g128-gptq", cat)
        d1, d2 = n.drop("base", "w3a16g128-awq", cat), n.drop("base", "w3a16g128-gptq", cat)
        assert gap[0] == pytest.approx(d1[0] - d2[0], abs=1e-9)
        assert 0 < gap[1] < d1[1] + d2[1]  # paired: below the sum of the two se


def test_markdown_states_the_decided_share_and_the_zero_margin_one(tmp_path):
    plan = {k: PLAN[k] for k in ("fp16", "w4a16g128-gptq", "w4a16g128-awq")}
    df = _frame(_store(tmp_path, plan, n=2000))
    found, zero = judge(df, CATS, ROLES), judge(df, CATS, ROLES, margin=0.0)
    from dllmq.findings import decided
    d, t = decided(found)
    dz, _ = decided(zero)
    assert dz < d <= t
    md = findings_markdown(found, at_zero_margin=zero)
    assert f"Decided: {d} of {t} F1-F8 sub-claims" in md and "With a zero margin" in md and f" {dz} of {t} would be" in md


@pytest.mark.slow
def test_run_study_through_two_workers_equals_one_process(tmp_path):
    # params `workers: 2` (the default preset) computes the cells in worker processes; the
    # study's frame is the same as one process at the same thread count
    import torch
    from dllmq import study

    p = study.load_params("smoke")
    frames = []
    for workers in (1, 2):
        q = {**p, "store": str(tmp_path / f"w{workers}.sqlite"), "workers": workers, "threads": 1}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            frames.append(study.run_study(q, ["llada_base"], ["fp16", "w4a16g128-rtn"],
                                          categories=("qa", "math"), progress=False))
        finally:
            torch.set_num_threads(threads)
    a, b = (f.sort_values(["recipe", "task"]).reset_index(drop=True) for f in frames)
    assert len(a) == 4
    assert a[["recipe", "task", "value", "stderr"]].equals(b[["recipe", "task", "value", "stderr"]])
    assert list(a["scores"]) == list(b["scores"])
    from dllmq.store import Store
    assert not {r.worker for r in Store(tmp_path / "w1.sqlite").results()} & {
        r.worker for r in Store(tmp_path / "w2.sqlite").results()}  # computed by the workers


def test_resize_items_truncates_to_a_prefix_and_tiling_shrinks_the_paired_se(tmp_path):
    from dllmq import stats
    from dllmq.findings import resize_items
    from dllmq.report import aligned

    df = _frame(_store(tmp_path, {"fp16": PLAN["fp16"], "w3a16g128-gptq": PLAN["w3a16g128-gptq"]}, n=200))
    cut = resize_items(df, counts={"qa_task": 50})
    qa = cut[cut.task == "qa_task"]
    assert all(sorted(d for d, _ in s) == list(range(50)) for s in qa["scores"])
    assert all(len(s) == 200 for s in cut[cut.task != "qa_task"]["scores"])  # other tasks untouched
    r = qa.iloc[0]
    assert r["value"] == pytest.approx(np.mean(list(r["scores"].values())))

    def drop(frame):
        g = frame[(frame.model == "base") & (frame.task == "math_task")].set_index("recipe")["scores"]
        q, fp = aligned(g["w3a16g128-gptq"], g["fp16"])
        return stats.rel_drop(q, fp)

    (d1, se1), (d4, se4) = drop(df), drop(resize_items(df, tile={"math_task": 4}))
    assert d4 == pytest.approx(d1)  # same effect
    assert se4 == pytest.approx(se1 / 2, rel=0.01)  # 4x the items: half the se (ddof aside)


def test_role_tasks_apply_family_settings_over_the_task_settings():
    from dllmq import study

    p = study.load_params("smoke")
    p = {**p, "family_settings": {"dream": {"dllmq_qa": {"mc_num": 8}}}}
    llada = {t["task"]: t["settings"] for t in study.role_tasks(p, "llada_base")}
    dream = {t["task"]: t["settings"] for t in study.role_tasks(p, "dream_base")}
    assert dream["dllmq_qa"]["mc_num"] == 8 and llada["dllmq_qa"]["mc_num"] == p["tasks"]["qa"][0]["settings"]["mc_num"]
    assert "block_length" not in dream["dllmq_math"] and "block_length" in llada["dllmq_math"]  # LLaDA-only key
    assert dream["dllmq_math"] == {k: v for k, v in llada["dllmq_math"].items() if k != "block_length"}
    assert study.role_tasks(p, "llada_instruct", ["math"])[0]["settings"]["apply_chat_template"] is True


def test_run_study_with_a_bad_task_fails_before_creating_the_store(tmp_path):
    from dllmq import study
    from dllmq.sweep import GridError

    p = study.load_params("smoke")
    store = tmp_path / "never.sqlite"
    p = {**p, "store": str(store), "workers": 1,
         "tasks": {**p["tasks"], "qa": [{"task": "no_such_task", "settings": {}}]}}
    with pytest.raises(GridError, match="no_such_task"):
        study.run_study(p, ["llada_base"], ["fp16"], categories=("qa",), progress=False)
    assert not store.exists() and list(tmp_path.iterdir()) == []
