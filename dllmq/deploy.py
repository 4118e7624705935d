"""Accuracy of a real low-bit path against its fake-quant twin, paired on the same items
(orchestration layer: it drives the lm-eval adapter over `dllmq.kernels.realize`d models).

`paired_accuracy("tiny-llada-base", ("fp8-fake", "fp8"))` evaluates the model once per backend
(`None` = the float model) on the same task items with the same seeds, through the lm-eval
adapter the study uses, and returns per-item scores; `paired_summary` compares two backends
item by item (accuracy of each, the share of items scored identically, the paired difference
and its standard error). The real and fake twins use the same codes, so they can differ only
where float rounding moved an activation across a rounding boundary (tests/test_kernels.py).
`recipe` quantizes the model (fake quant) before the backends realize it, and VARIANTS names
realize options as backends: `paired_accuracy("tiny-llada-base", ("w4a16", "w4a16-int4-head"),
recipe="w4a16g128-rtn")` pairs the int4 LM head and embedding with the float ones.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import lm_eval
import torch

from .harness import DLLMEvalLM
from .kernels import realize
from .models import load, load_tokenizer
from .quant import quantize_
from .sweep import Grid, TaskSpec, task_manager

# backend names beyond dllmq.kernels.BACKENDS: (backend, realize options)
VARIANTS = {"w4a16-int4-head": ("w4a16", {"head": "int4"})}


def paired_accuracy(model_name: str, backends: Sequence[str | None] = (None, "fp8-fake", "fp8"),
                    task: str = "dllmq_qa", limit: int = 100, mc_num: int = 4, seed: int = 0,
                    device: str = "cpu", recipe: str | None = None) -> dict[str | None, list[float]]:
    """{backend: per-item scores (task order)} for one model and one task; a backend is None
    (the model as loaded, or as `recipe` fake-quantized it), a kernels backend or a VARIANTS name."""
    base = load(model_name, device=device, dtype=torch.float32)
    if recipe is not None:
        quantize_(base, recipe, None, progress=False)
    tok = load_tokenizer(model_name)
    tm = task_manager(Grid(models=(model_name,), recipes=("fp16",), tasks=(TaskSpec(task),),
                           include_defaults=False))
    out: dict[str | None, list[float]] = {}
    for backend in backends:
        model = copy.deepcopy(base)
        if backend is not None:
            name, options = VARIANTS.get(backend, (backend, {}))
            realize(model, name, **options)
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
