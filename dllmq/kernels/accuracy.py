"""Accuracy of a real low-bit path against its fake-quant twin, paired on the same items.

`paired_accuracy("tiny-llada-base", ("fp8-fake", "fp8"))` evaluates the model once per backend
(`None` = the float model) on the same task items with the same seeds, through the lm-eval
adapter the study uses, and returns per-item scores; `paired_summary` compares two backends
item by item (accuracy of each, the share of items scored identically, the paired difference
and its standard error). The real and fake twins use the same codes, so they can differ only
where float rounding moved an activation across a rounding boundary (tests/test_kernels.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch

from dllmq.models import load, load_tokenizer

from .realize import realize


def paired_accuracy(model_name: str, backends: Sequence[str | None] = (None, "fp8-fake", "fp8"),
                    task: str = "dllmq_qa", limit: int = 100, mc_num: int = 4, seed: int = 0,
                    device: str = "cpu") -> dict[str | None, list[float]]:
    """{backend: per-item scores (task order)} for one model and one task."""
    import lm_eval

    from dllmq.harness import DLLMEvalLM
    from dllmq.sweep import Grid, TaskSpec, task_manager

    base = load(model_name, device=device, dtype=torch.float32)
    tok = load_tokenizer(model_name)
    tm = task_manager(Grid(models=(model_name,), recipes=("fp16",), tasks=(TaskSpec(task),),
                           include_defaults=False))
    out: dict[str | None, list[float]] = {}
    for backend in backends:
        model = copy.deepcopy(base)
        if backend is not None:
            realize(model, backend)
        lm = DLLMEvalLM(model=model, tokenizer=tok, mc_num=mc_num, seed=seed)
        res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, limit=limit,
                                      log_samples=True, bootstrap_iters=0)
        samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        metric = next(k for k in ("acc", "exact_match", "pass@1") if k in samples[0])
        out[backend] = [float(s[metric]) for s in samples]
    return out


def paired_summary(scores: dict[str | None, list[float]], a: str | None, b: str | None) -> dict:
    """Accuracy of a and b on the same items, identical-item share, mean(b - a) and its s.e."""
    x, y = scores[a], scores[b]
    if len(x) != len(y):
        raise ValueError(f"{a} has {len(x)} items and {b} {len(y)}; pair the same items")
    n = len(x)
    d = [yi - xi for xi, yi in zip(x, y, strict=True)]
    mean = sum(d) / n
    var = sum((di - mean) ** 2 for di in d) / (n - 1) if n > 1 else 0.0
    return {"a": a or "fp", "b": b or "fp", "n": n, "acc_a": sum(x) / n, "acc_b": sum(y) / n,
            "same_score": sum(xi == yi for xi, yi in zip(x, y, strict=True)) / n,
            "diff": mean, "diff_se": math.sqrt(var / n)}
