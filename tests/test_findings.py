import pandas as pd
from dllmq.findings import findings_markdown, judge

CATS = {"qa_task": "qa", "math_task": "math", "code_task": "code"}


def _frame(acc):
    """acc: {(model, recipe): {category: accuracy}} -> tidy frame with small stderrs."""
    rows = []
    task_of = {v: k for k, v in CATS.items()}
    for (model, recipe), cats in acc.items():
        for cat, v in cats.items():
            rows.append(dict(model=model, recipe=recipe, task=task_of[cat], value=v, stderr=0.002))
    return pd.DataFrame(rows)


def _scenario(w3_math, awq_better=False):
    acc = {}
    for m in ("base", "inst"):
        acc[(m, "fp16")] = {"qa": 0.80, "math": 0.60, "code": 0.50}
        acc[(m, "w4a16g128-gptq")] = {"qa": 0.80, "math": 0.60, "code": 0.50}
        acc[(m, "w4a16g128-awq")] = {"qa": 0.79 if not awq_better else 0.81, "math": 0.59, "code": 0.49}
        acc[(m, "w3a16g128-gptq")] = {"qa": 0.70, "math": w3_math, "code": 0.30}
        acc[(m, "w3a16g128-awq")] = {"qa": 0.68, "math": w3_math - 0.02, "code": 0.35}
    return _frame(acc)


def test_f1_holds_when_w4_lossless_and_w3_drops():
    f = {x.key: x for x in judge(_scenario(0.40), CATS, {"llada_base": "base", "llada_instruct": "inst"})}
    assert f["F1"].verdict == "holds"
    assert f["F3"].verdict == "holds"  # GPTQ ahead except 3-bit code, where AWQ leads
    assert f["F6"].verdict == "holds"


def test_f1_fails_when_w3_is_lossless():
    f = {x.key: x for x in judge(_scenario(0.60), CATS, {"llada_base": "base", "llada_instruct": "inst"})}
    assert f["F1"].verdict in ("mixed", "does not hold")
    assert any(c.verdict == "does not hold" for c in f["F1"].checks)


def test_markdown_lists_every_finding_and_unmeasured_ones():
    md = findings_markdown(judge(_scenario(0.40), CATS, {"llada_base": "base"}))
    for k in [f"F{i}" for i in range(9)]:
        assert f"| {k} |" in md
    assert "not measured" in md
