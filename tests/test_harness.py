"""DLLMEvalLM: model args, seeded Monte Carlo likelihood, generation with stops, chat template,
the lm-eval CLI path vs simple_evaluate, data parallel (slow)."""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dllmq.harness import DLLMEvalLM, EvalSettings, cut_at_stops, request_settings
from lm_eval.api.instance import Instance

from evalkit import make_model_dir, write_tasks

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model_dir = make_model_dir(root / "tiny-llada")
    return {"root": root, "model": model_dir, "tasks": write_tasks(root)}


@pytest.fixture(scope="module")
def lm(env):
    return DLLMEvalLM(str(env["model"]), mc_num=8, batch_size=4)


def _req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_unknown_model_arg_is_one_line_listing_the_valid_ones(env):
    with pytest.raises(TypeError) as e:
        DLLMEvalLM(str(env["model"]), mc_nmu=4)
    msg = str(e.value)
    assert "\n" not in msg and "mc_nmu" in msg
    assert all(k in msg for k in ("mc_num", "gen_length", "pretrained", "recipe", "seed"))


def test_bad_settings_fail_at_construction(env, lm):
    model, tok = lm.model, lm.tokenizer
    with pytest.raises(ValueError, match="integer batch size"):
        DLLMEvalLM(model=model, tokenizer=tok, batch_size="auto")
    with pytest.raises(ValueError, match="alg apply to another sampler, not the llada"):
        DLLMEvalLM(model=model, tokenizer=tok, alg="entropy")
    with pytest.raises(ValueError, match="multiple of block_length"):
        DLLMEvalLM(model=model, tokenizer=tok, gen_length=10, block_length=4)
    with pytest.raises(ValueError, match="quantize a model object yourself"):
        DLLMEvalLM(model=model, tokenizer=tok, recipe="w4a16g128-rtn")
    with pytest.raises(ValueError, match="either pretrained"):
        DLLMEvalLM(str(env["model"]), model=model, tokenizer=tok)


def test_likelihood_is_seeded_and_each_request_independent_of_the_others(lm):
    reqs = [_req("loglikelihood", "q: what is 2 plus 1?\na:", c) for c in (" 33", " 4 4", " no way")]
    first = [ll for ll, _ in lm.loglikelihood(reqs)]
    assert [ll for ll, _ in lm.loglikelihood(reqs)] == first
    # the same request alone, or in another order, gets the same estimate
    alone = lm.loglikelihood([reqs[1]])[0][0]
    assert alone == pytest.approx(first[1], rel=1e-6)
    rev = [ll for ll, _ in lm.loglikelihood(reqs[::-1])]
    assert rev[::-1] == pytest.approx(first, rel=1e-6)
    other = [ll for ll, _ in lm.with_settings(seed=7).loglikelihood(reqs)]
    assert all(a != b for a, b in zip(other, first, strict=True))
    assert all(ll < 0 for ll in first)


def test_greedy_check_matches_the_models_own_greedy_suffix(lm):
    """is_greedy is True exactly for the continuation the one-token-per-step decode produces."""
    import torch

    ctx = lm.tok_encode("say yes:")
    seq = torch.tensor([ctx + [lm.model.config.mask_token_id] * 3])
    for _ in range(3):
        masked = seq == lm.model.config.mask_token_id
        logits = lm.model.denoise_logits(seq)[masked]
        conf, x0 = logits.softmax(-1).max(-1)
        best = conf.argmax()
        pos = masked.nonzero()[best]
        seq[pos[0], pos[1]] = x0[best]
    target = lm.tokenizer.decode(seq[0, len(ctx):].tolist())
    g = lm.with_settings(greedy_check=True)
    res = g.loglikelihood([_req("loglikelihood", "say yes:", target),
                           _req("loglikelihood", "say yes:", target[::-1] + "#")])
    assert [r[1] for r in res] == [True, False]


def test_rolling_is_the_elbo_of_the_text_after_the_prefix_token(lm):
    text = "the cat sat on the mat."
    rolled = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])[0]
    tokens = lm.tok_encode(text, add_special_tokens=False)
    direct = lm._mc_loglikelihood([([lm.prefix_token_id], tokens)], "t", disable_tqdm=True)[0]
    assert rolled == pytest.approx(direct, rel=1e-6)
    # a context shorter than the text: several windows, each token scored once
    short = lm.with_settings(max_length=8).loglikelihood_rolling(
        [_req("loglikelihood_rolling", text)])[0]
    assert short < 0 and short != pytest.approx(rolled, rel=1e-3)


def test_generate_until_cuts_at_stops_and_batches_decode_as_singles(lm):
    prompts = [f"say {w}:" for w in ("yes", "no", "down")]
    kw = {"max_gen_toks": 6, "until": []}
    free = lm.generate_until([_req("generate_until", p, kw) for p in prompts])
    assert len(set(free)) > 1, "the tiny model should not decode every prompt alike"
    singles = [lm.with_settings(batch_size=1).generate_until([_req("generate_until", p, kw)])[0]
               for p in prompts]
    assert singles == free
    stops = [t[3] if len(t) > 3 else t[-1] for t in free]
    cut = lm.generate_until([_req("generate_until", p, {"max_gen_toks": 6, "until": [s, "\0"]})
                             for p, s in zip(prompts, stops, strict=True)])
    assert cut == [t[:t.index(s)] for t, s in zip(free, stops, strict=True)]


def test_request_settings_from_generation_kwargs():
    base = EvalSettings(gen_length=64, temperature=0.5)
    s, until = request_settings(base, {"until": "\n", "max_gen_toks": 16, "do_sample": False,
                                       "steps": 8})
    assert (s.gen_length, s.steps, s.temperature, until) == (16, 8, 0.0, ["\n"])
    with pytest.raises(ValueError, match="not understood"):
        request_settings(base, {"repetition_penalty": 1.1})
    with pytest.raises(ValueError, match="give one of them"):
        request_settings(base, {"max_gen_toks": 16, "gen_length": 32})
    assert cut_at_stops("ab.cd\nef", ["\n", "."]) == "ab"
    assert cut_at_stops("abc", ["", "x"]) == "abc"


def test_chat_template_only_when_asked(env, lm):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(env["tasks"]), include_defaults=False)
    prompts = {}
    for flag in (False, True):
        res = lm_eval.simple_evaluate(model=lm, tasks=["tiny_gen"], limit=2, task_manager=tm,
                                      apply_chat_template=flag, log_samples=True)
        prompts[flag] = [s["arguments"][0][0] for s in res["samples"]["tiny_gen"]]
    assert all(p.startswith("<bos>user: say") and p.endswith("assistant: ") for p in prompts[True])
    assert all(p.startswith("say") for p in prompts[False])


def _subprocess_env() -> dict:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def _by_doc(samples):
    return {s["doc_id"]: s["resps"] for s in samples}


def _simple(env, model, **kw):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=["tiny_mc", "tiny_gen"], log_samples=True,
                                   task_manager=TaskManager(include_path=str(env["tasks"]),
                                                            include_defaults=False), **kw)


def _assert_same(cli_results, cli_samples, res):
    """Metrics equal; per-sample responses equal (lm-eval's sample files hold them as text)."""
    for task in ("tiny_mc", "tiny_gen"):
        for k, v in res["results"][task].items():
            if isinstance(v, float):
                assert cli_results[task][k] == pytest.approx(v, rel=1e-9), (task, k)
        a, b = _by_doc(cli_samples[task]), _by_doc(res["samples"][task])
        assert a.keys() == b.keys()
        for d in a:
            if task == "tiny_mc":
                assert [float(x[0][0]) for x in a[d]] == pytest.approx([x[0][0] for x in b[d]])
            else:
                assert a[d] == b[d]


def test_registered_name_and_object_give_the_same_numbers(env, lm):
    """The `--model dllmq --model_args ...` route (create_from_arg_string, as lm-eval's CLI
    does it) equals passing the object to simple_evaluate."""
    from lm_eval.api.registry import get_model

    assert get_model("dllmq") is DLLMEvalLM
    by_name = _simple(env, "dllmq", model_args=f"pretrained={env['model']},mc_num=8", batch_size=4)
    by_obj = _simple(env, lm)
    _assert_same(by_name["results"], by_name["samples"], by_obj)


def test_lm_eval_cli_and_simple_evaluate_give_the_same_numbers(env, lm, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dllmq", "lm_eval", "--model", "dllmq", "--model_args",
         f"pretrained={env['model']},mc_num=8", "--batch_size", "4", "--device", "cpu",
         "--tasks", "tiny_mc,tiny_gen", "--include_path", str(env["tasks"]),
         "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=_subprocess_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    cli = json.loads(Path(found[0]).read_text())
    samples = {t: [json.loads(line) for line in Path(glob.glob(
        str(out / "**" / f"samples_{t}_*.jsonl"), recursive=True)[0]).read_text().splitlines()]
        for t in ("tiny_mc", "tiny_gen")}
    _assert_same(cli["results"], samples, _simple(env, lm))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_data_parallel_two_cpu_processes_equal_one(env, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): per-sample numbers equal one process.
    Note: `accelerate launch --cpu --num_processes 2` needs mpirun; torchrun-style launching
    with ACCELERATE_USE_CPU=1 gives the same MULTI_CPU setup without it."""
    script = Path(__file__).with_name("evalkit_dp.py")
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"dp{n}.json"
        cmd = ([sys.executable, str(script)] if n == 1 else
               [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script)])
        proc = subprocess.run([*cmd, str(env["model"]), str(env["tasks"]), str(out)],
                              capture_output=True, text=True, timeout=600,
                              env={**_subprocess_env(), "ACCELERATE_USE_CPU": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[n] = json.loads(out.read_text())
    assert (outs[1]["world_size"], outs[2]["world_size"]) == (1, 2)
    one, two = outs[1]["samples"], outs[2]["samples"]
    assert one["tiny_gen"] == two["tiny_gen"]
    assert one["tiny_mc"].keys() == two["tiny_mc"].keys()
    for d, resps in one["tiny_mc"].items():  # batch composition differs: float rounding only
        assert [r[0][0] for r in two["tiny_mc"][d]] == pytest.approx([r[0][0] for r in resps],
                                                                     rel=1e-5)
    for task, metrics in outs[1]["results"].items():
        assert outs[2]["results"][task] == pytest.approx(metrics)


def test_per_task_paper_settings_and_precedence(lm):
    """Appendix A per task unless a setting was given explicitly; then the model arg wins, also
    over the task's generation_kwargs."""
    plain = DLLMEvalLM(model=lm.model, tokenizer=lm.tokenizer)
    assert plain.settings_for("arc_easy").mc_num == 128
    assert plain.settings_for("mmlu_anatomy").mc_num == 1
    g = plain.settings_for("gsm8k")
    assert (g.gen_length, g.steps, g.block_length) == (256, 256, 32)
    assert plain.settings_for("tiny_mc") == plain.settings  # not a paper task
    assert lm.settings_for("arc_easy").mc_num == 8  # explicit mc_num=8
    off = DLLMEvalLM(model=lm.model, tokenizer=lm.tokenizer, task_settings=False)
    assert off.settings_for("arc_easy").mc_num == EvalSettings().mc_num
    quick = plain.with_settings(gen_length=64, block_length=64)
    s, _ = request_settings(quick.settings_for("gsm8k"), {"max_gen_toks": 256}, quick.explicit)
    assert (s.gen_length, s.steps, s.block_length) == (64, 256, 64)


def test_dream_cfg_applies_to_likelihood_and_refuses_generation(lm):
    from evalkit import make_model

    dream = DLLMEvalLM(model=make_model("Dream"), tokenizer=lm.tokenizer, cfg_scale=1.0,
                       mc_num=4, batch_size=4)
    guided = dream.loglikelihood([_req("loglikelihood", "say", " yes")])[0][0]
    plain = dream.with_settings(cfg_scale=0.0).loglikelihood([_req("loglikelihood", "say", " yes")])
    assert guided != pytest.approx(plain[0][0])
    with pytest.raises(ValueError, match="Dream's sampler has no classifier-free guidance"):
        dream.generate_until([_req("generate_until", "say", {"max_gen_toks": 4})])
    out = dream.with_settings(cfg_scale=0.0).generate_until(
        [_req("generate_until", "say", {"max_gen_toks": 4})])
    assert len(out) == 1 and isinstance(out[0], str)


def test_dream_scores_every_continuation_token_as_upstream_with_eos_appended(lm):
    """QDLM's Dream wrapper appends EOS to the continuation and never masks the last position:
    a one-token continuation must still be scored (the estimate is < 0, and it equals the
    packed estimator run on continuation + EOS)."""
    from dllmq.harness import request_seed
    from dllmq.likelihood import draw_masks, evaluate_masks

    from evalkit import make_model

    model = make_model("Dream")
    dream = DLLMEvalLM(model=model, tokenizer=lm.tokenizer, mc_num=8, batch_size=4)
    ctx, cont = dream.encode_pair("sa", "y")
    assert len(cont) == 1
    ll = dream.loglikelihood([_req("loglikelihood", "sa", "y")])[0][0]
    assert ll < 0
    target = [*cont, model.config.eos_token_id]
    draw = draw_masks(len(ctx), len(target), 8, 4,
                      torch.Generator().manual_seed(request_seed(dream.settings.seed, ctx, target)),
                      "dream")
    assert not draw.is_mask[:, -1].any()  # EOS is never scored
    assert ll == pytest.approx(evaluate_masks(model, [(ctx, target)], [draw], 0.0, 4)[0], rel=1e-6)


def test_dream_generation_gets_the_papers_128_tokens_and_top_p(lm, monkeypatch):
    """Appendix A: Dream generates 128 new tokens with top-p 0.95 on every generation task, also
    where the task's generation_kwargs carry LLaDA's length (paper tasks set max_gen_toks 256);
    explicit model args still win. (Before: 256 tokens, top_p None.)"""
    import dllmq.harness as harness

    from evalkit import make_model

    seen = []

    def fake_generate(model, prompts, cfg, generator=None):
        seen.append(cfg)
        return type("Out", (), {"tokens": torch.zeros(len(prompts), cfg.new_tokens, dtype=torch.long)})

    monkeypatch.setattr(harness, "generate", fake_generate)
    dream = DLLMEvalLM(model=make_model("Dream", max_position=512), tokenizer=lm.tokenizer)
    for task in ("gsm8k", "tiny_gen"):
        r = _req("generate_until", "say", {"max_gen_toks": 256, "until": ["\n"]})
        r.task_name = task
        dream.generate_until([r])
    assert [(c.new_tokens, c.steps, c.top_p) for c in seen] == [(128, 128, 0.95)] * 2
    seen.clear()
    r = _req("generate_until", "say", {"max_gen_toks": 256})
    r.task_name = "gsm8k"
    dream.with_settings(gen_length=32, top_p=0.5).generate_until([r])
    assert (seen[0].new_tokens, seen[0].steps, seen[0].top_p) == (32, 32, 0.5)


def test_a_prompt_longer_than_the_context_is_an_error_unless_truncate(lm):
    """Left-truncating silently changes the task; it must be asked for (truncate=True)."""
    short = lm.with_settings(max_length=16)
    r = _req("loglikelihood", "q: " + "what is 2 plus 1? " * 4, " 3")
    r.task_name = "tiny_mc"
    with pytest.raises(ValueError, match="1 of 1 contexts of tiny_mc exceed max_length 16 .*"
                                         "truncate=true"):
        short.loglikelihood([r])
    g = _req("generate_until", "say " * 20, {"max_gen_toks": 4})
    g.task_name = "tiny_gen"
    with pytest.raises(ValueError, match="prompts .* of tiny_gen exceed max_length 16"):
        short.with_settings(gen_length=4, block_length=4).generate_until([g])
    ok = short.with_settings(truncate=True).loglikelihood([r])
    assert len(ok) == 1 and ok[0][0] < 0


def test_check_sampler_docstring_states_dllmqs_cfg_convention():
    from dllmq.harness import check_sampler

    assert "the paper's Dream setting" not in check_sampler.__doc__
    assert "(cfg_scale + 1)" in check_sampler.__doc__


def test_each_recipe_keeps_its_own_calibration_under_the_paper_preset():
    """AWQ calibrates on Pile-val 128 x 512 and GPTQ on WikiText-2 128 x 2048 as the paper preset
    runs them (its `calib` used to force WikiText-2 128 x 2048 on AWQ); a grid changes one
    recipe's calibration only through that recipe's entry."""
    import yaml
    from dllmq.harness import resolve_calibration

    calib = yaml.safe_load((REPO / "params" / "paper.yaml").read_text())["calib"]
    hub = "GSAI-ML/LLaDA-8B-Base"
    assert resolve_calibration("w4a16g128-awq", hub, calib, 4096) == {
        "source": "pileval", "nsamples": 128, "seqlen": 512, "seed": 0}
    assert resolve_calibration("w4a16g128-gptq", hub, calib, 4096) == {
        "source": "wikitext2", "nsamples": 128, "seqlen": 2048, "seed": 0}
    per = {"samples": 16, "w4a16g128-awq": {"seqlen": 256}, "w4a16g128-gptq:code": {"seed": 3}}
    assert resolve_calibration("w4a16g128-awq", hub, per) == {
        "source": "pileval", "nsamples": 16, "seqlen": 256, "seed": 0}
    assert resolve_calibration("w4a16g128-gptq", hub, per)["seed"] == 0
    assert resolve_calibration("w4a16g128-gptq:code", hub, per)["seed"] == 3
    assert resolve_calibration("w4a16g128-rtn", hub, per) is None
    with pytest.raises(ValueError, match="'w4a16g128-awk' is neither a calibration key"):
        resolve_calibration("w4a16g128-awq", hub, {"w4a16g128-awk": {"samples": 1}})


def test_shipped_models_bring_their_own_calibration_and_task_defaults(tmp_path):
    from dllmq.harness import model_defaults, resolve_calibration
    from dllmq.models.io import shipped_models

    for m in shipped_models():
        assert resolve_calibration("w4a16g128-awq", m, None, 1024) == {
            "source": "embedded", "nsamples": 32, "seqlen": 128, "seed": 0}
    dlms = [m for m in shipped_models() if m != "tiny-ar"]  # tiny-ar: an AR model, no tasks
    for m in dlms:
        tasks = model_defaults(m).tasks
        assert set(tasks) == {"dllmq_qa", "dllmq_math", "dllmq_code"}
        assert tasks["dllmq_math"].get("apply_chat_template", False) == (m == "tiny-llada-instruct")
    # a flat override wins over the model's defaults; a checkpoint without the file has none
    assert resolve_calibration("w4a16g128-gptq", dlms[0], {"samples": 4})["nsamples"] == 4
    plain = make_model_dir(tmp_path / "m")
    assert resolve_calibration("w4a16g128-gptq", str(plain))["source"] == "wikitext2"
    (plain / "dllmq_defaults.yaml").write_text("calibration: {sauce: embedded}\n")
    with pytest.raises(ValueError, match="dllmq_defaults.yaml: expected keys calibration"):
        model_defaults(str(plain))
