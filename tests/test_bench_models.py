"""bench/bench_models.py: its FLOP arithmetic, its on-device random models, and a tiny CPU run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from dllmq.models import tiny_config
from torch import nn

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_models.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_models", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


CONFIGS = [tiny_config("llada", embedding_size=80), tiny_config("Dream")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["llada", "dream"])
def test_matmul_params_counts_every_linear_weight(bench, cfg):
    model = bench.random_model_on(cfg, torch.device("cpu"), torch.float32)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert bench.matmul_params(cfg) == linear


def test_attention_flops_grow_with_sequence(bench):
    cfg = CONFIGS[0]
    per_extra_key = bench.forward_flops_per_token(cfg, 101) - bench.forward_flops_per_token(cfg, 100)
    assert per_extra_key == 4 * cfg.hidden_size * cfg.num_layers


def test_8b_shapes_match_the_paper(bench):
    # /work/shared/paper/README.md: LLaDA-8B has ~8B parameters, Dream-7B ~7.6B (Qwen2.5-7B)
    for make, lo, hi in ((bench.llada_8b, 7.9e9, 8.1e9), (bench.dream_7b, 7.5e9, 7.7e9)):
        cfg = make()
        with torch.device("meta"):
            n = sum(p.numel() for p in bench.MODEL_CLASSES[cfg.model_type](cfg).parameters())
        assert lo < n < hi


@pytest.mark.parametrize("cfg", CONFIGS, ids=["llada", "dream"])
def test_random_model_on_device_init(bench, cfg):
    model = bench.random_model_on(cfg, torch.device("cpu"), torch.bfloat16, seed=3)
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    norms = [p for n, p in params.items() if p.dim() == 1 and not n.endswith("bias")]
    assert norms and all(bool((p == 1).all()) for p in norms)
    w = params[f"{model.spec.blocks}.0.{model.spec.down}.weight"].float()
    assert 0.015 < w.std().item() < 0.025
    again = bench.random_model_on(cfg, torch.device("cpu"), torch.bfloat16, seed=3)
    assert torch.equal(w, dict(again.named_parameters())[f"{model.spec.blocks}.0.{model.spec.down}.weight"].float())


def test_tiny_run_writes_the_table(bench, tmp_path):
    out = tmp_path / "bench.md"
    rows = bench.main(["--tiny", "--arch", "llada", "--out", str(out)])
    text = out.read_text()
    kinds = {(r.measurement, r.unit) for r in rows}
    assert {("matmul peak", "TFLOP/s"), ("forward", "tokens/s"), ("generate", "ms/step"),
            ("generate", "tokens/s")} <= kinds
    assert all(r.value > 0 for r in rows)
    assert sum(r.measurement == "generate" for r in rows) == 2 * len(bench.TINY.gen_batches)
    assert text.count("| tiny-llada |") == sum(r.model == "tiny-llada" for r in rows)
