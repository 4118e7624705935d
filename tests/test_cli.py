"""`python -m dllmq` commands that need no lm-eval run: quantize (saved weights load back and
compute what the in-memory quantized model computes), bench listing, argument errors."""

from pathlib import Path

import pytest
import torch
from dllmq.cli import main
from dllmq.harness import quantize_model
from dllmq.models import load, load_tokenizer

from evalkit import make_model_dir


def test_quantize_saves_a_checkpoint_that_loads_with_the_same_outputs(tmp_path):
    src = make_model_dir(tmp_path / "m")
    assert main(["quantize", "--model", str(src), "--recipe", "w4a16g128-rtn",
                 "--out", str(tmp_path / "q"), "--device", "cpu"]) == 0
    saved = load(tmp_path / "q", device="cpu")
    ref = load(src, device="cpu")
    quantize_model(ref, load_tokenizer(src), "w4a16g128-rtn")
    x = torch.randint(0, 59, (2, 12))
    fp = load(src, device="cpu").denoise_logits(x)
    assert torch.equal(saved.denoise_logits(x), ref.denoise_logits(x))
    assert not torch.allclose(saved.denoise_logits(x), fp)  # it was quantized
    assert load_tokenizer(tmp_path / "q")("ab")["input_ids"] == load_tokenizer(src)("ab")["input_ids"]


def test_unknown_bench_and_bad_set_are_one_line(capsys):
    with pytest.raises(SystemExit, match="no benchmark 'nope'; available: .*bench_likelihood"):
        main(["bench", "nope"])
    with pytest.raises(SystemExit, match="--set takes name=value"):
        main(["eval", "--model", "m", "--tasks", "t", "--set", "mc_num"])


def test_missing_calibration_file_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    src = make_model_dir(tmp_path / "m")
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("DLLMQ_DATA_DIR", str(empty))
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--model", str(src), "--recipe", "w4a16g128-gptq",
              "--out", str(tmp_path / "q"), "--device", "cpu"])
    msg = str(e.value)
    assert msg.startswith("dllmq: error:") and "\n" not in msg and "wikitext2_raw_train.txt" in msg
    assert not (tmp_path / "q").exists()


def _one_line(e) -> str:
    msg = str(e.value)
    assert msg.startswith("dllmq: error:") and "\n" not in msg, msg
    return msg


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model or evaluating."""
    import dllmq.models
    import dllmq.sweep

    def boom(*a, **k):
        raise AssertionError("reached the model load / evaluation")

    monkeypatch.setattr(dllmq.models, "load", boom)
    monkeypatch.setattr(dllmq.sweep, "run_sweep", boom)


@pytest.mark.parametrize("argv, expect", [
    (["--limit", "0"], "--limit 0: give a positive number"),
    (["--limit", "-3"], "--limit -3: give a positive number"),
    (["--num-fewshot", "-1"], "--num-fewshot -1: give 0 or more"),
    (["--recipe", "w4a16g128-gtpq"], "--recipe w4a16g128-gtpq: unknown recipe"),
    (["--calib", "wiki"], "--calib wiki: unknown source"),
    (["--calib-samples", "0"], "--calib-samples must be >= 1"),
    (["--tasks", "paper_arc_easy", "--num-fewshot", "200"],
     "paper_arc_easy uses the paper's 0 shots"),
])
def test_eval_bad_arguments_are_one_line_before_the_model_loads(argv, expect, no_model_load):
    base = ["eval", "--model", "tiny-llada-instruct", "--tasks", "dllmq_qa", "--no-default-tasks"]
    with pytest.raises(SystemExit) as e:
        main(base + argv)
    assert expect in _one_line(e)


def test_eval_tasks_checked_before_the_model_loads(no_model_load):
    base = ["eval", "--model", "tiny-llada-instruct", "--no-default-tasks"]
    with pytest.raises(SystemExit) as e:
        main([*base, "--tasks", "dllmq_code", "--limit", "1"])
    assert "dllmq_code executes model-written programs; give --confirm-run-unsafe-code" in _one_line(e)
    with pytest.raises(SystemExit) as e:
        main([*base, "--tasks", "dllmq_qa", "--num-fewshot", "200"])
    assert "--num-fewshot 200: task dllmq_qa has" in _one_line(e)


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, no_model_load):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    base = ["eval", "--model", "tiny-llada-instruct", "--tasks", "dllmq_qa", "--no-default-tasks"]
    for flag in ("--json", "--store"):
        with pytest.raises(SystemExit) as e:
            main([*base, flag, str(a_file / "out")])
        assert f"{flag} {a_file / 'out'}: cannot write there" in _one_line(e)
    with pytest.raises(SystemExit) as e:
        main([*base, "--json", str(tmp_path)])
    assert "is a directory" in _one_line(e)
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--model", "tiny-llada-base", "--recipe", "w4a16g128-rtn",
              "--out", str(a_file / "q")])
    assert "cannot write there" in _one_line(e)
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--model", "tiny-llada-base", "--recipe", "w4a16g128-rnt",
              "--out", str(tmp_path / "q")])
    assert "--recipe w4a16g128-rnt: unknown recipe" in _one_line(e)


def test_quantize_never_writes_into_the_package_or_a_full_directory(tmp_path, no_model_load):
    import dllmq

    shipped = Path(dllmq.__file__).parent / "assets" / "models" / "tiny-llada-base"
    for out in (shipped, shipped.parent / "new-model"):
        with pytest.raises(SystemExit) as e:
            main(["quantize", "--model", "tiny-llada-base", "--recipe", "w4a16g128-rtn",
                  "--out", str(out)])
        assert "is inside the installed dllmq package" in _one_line(e)
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--model", "tiny-llada-base", "--recipe", "w4a16g128-rtn",
              "--out", str(full)])
    assert "is not empty; pass --force" in _one_line(e)


def test_quantize_force_replaces_the_whole_directory(tmp_path):
    """A stale shard index in --out used to survive, so the 'quantized' model loaded as FP."""
    src = make_model_dir(tmp_path / "m")
    out = tmp_path / "q"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    assert main(["quantize", "--model", str(src), "--recipe", "w4a16g128-rtn", "--out", str(out),
                 "--device", "cpu", "--force"]) == 0
    assert not (out / "model.safetensors.index.json").exists()
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    x = torch.randint(0, 59, (1, 8))
    assert not torch.equal(load(out, device="cpu").denoise_logits(x),
                           load(src, device="cpu").denoise_logits(x))


def test_lm_eval_passthrough_adds_dllmqs_tasks_and_a_cpu_device(monkeypatch):
    from dllmq.cli import lm_eval_argv
    from dllmq.tasks.lm_eval import TASK_DIR

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lm_eval_argv(["--model", "dllmq"]) == ["--model", "dllmq", "--include_path",
                                                  str(TASK_DIR), "--device", "cpu"]
    given = ["--include_path=x", "--device", "cuda:1"]
    assert lm_eval_argv(given) == given


def test_pyproject_declares_the_lm_eval_entry_point():
    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["lm_eval.models"] == {"dllmq": "dllmq.harness:DLLMEvalLM"}


def test_the_data_directory_comes_from_the_setting_only(tmp_path, monkeypatch):
    """No library default outside the package: a `../shared/data/benchmarks` next to the
    checkout used to be picked up silently."""
    import dllmq.data as data

    (tmp_path / "shared" / "data" / "benchmarks").mkdir(parents=True)
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo", raising=False)
    monkeypatch.delenv("DLLMQ_DATA_DIR", raising=False)
    assert data.data_dir() is None
    monkeypatch.setenv("DLLMQ_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="DLLMQ_DATA_DIR=.*nope is not a directory"):
        data.data_dir()
    monkeypatch.setenv("DLLMQ_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path


def test_the_summary_table_shows_an_error_on_every_value():
    from dllmq.store import Cell, Result
    from dllmq.sweep import SweepReport

    def res(seed, value, stderr):
        return Result(Cell("m", "fp16", "t", {}, seed), {"acc,none": {"value": value,
                                                                       "stderr": stderr}}, 10, 1.0, "")

    table = SweepReport(done=[res(0, 0.5, 0.3), res(1, 0.7, 0.4)]).table()
    assert "0.6 ± 0.35" in table.splitlines()[2]  # mean ± rms stderr (0.09 + 0.16) / 2
    assert "0.5" in SweepReport(done=[res(0, 0.5, None)]).table().splitlines()[2]


def test_no_absolute_machine_paths_in_package_or_bench_sources():
    root = Path(__file__).resolve().parent.parent
    bad = [f"{p.relative_to(root)}:{i}" for d in ("dllmq", "bench") for p in (root / d).rglob("*.py")
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if any(s in line for s in ("/work/", "/home/", "/Users/"))]
    assert bad == []


def test_lm_eval_passthrough_names_the_unsafe_code_flag(monkeypatch):
    """lm-eval's own message says `confirm_run_unsafe_code=True` (a Python keyword). Its text
    below is lm-eval 0.4.13's (evaluator.evaluate); a real run of `python -m dllmq lm_eval
    --tasks dllmq_code` without the flag gives this one line too, after ~40 s of indexing."""
    import lm_eval.__main__

    def refuse():
        raise ValueError("Attempted to run task: dllmq_code which is marked as unsafe. Set "
                         "confirm_run_unsafe_code=True to run this task.")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", refuse)
    with pytest.raises(SystemExit) as e:
        main(["lm_eval", "--model", "dllmq", "--tasks", "dllmq_code"])
    msg = _one_line(e)
    assert "dllmq_code" in msg and "Pass --confirm_run_unsafe_code" in msg
    assert "confirm_run_unsafe_code=True" not in msg


def test_eval_cells_carry_the_models_task_defaults_under_the_command_line():
    """The README's `eval --model tiny-llada-instruct --tasks dllmq_math` scored 0 with the
    paper's lengths and no chat template; the model's dllmq_defaults.yaml now supplies the
    settings its model card was measured with, and every flag still wins."""
    from dllmq.cli import _eval_tasks, parser

    def cells(*extra):
        args = parser().parse_args(["eval", "--model", "tiny-llada-instruct", "--tasks",
                                    "dllmq_math,other_task", *extra])
        return _eval_tasks(args, {"steps": 8} | ({"apply_chat_template": False}
                                                  if "--no-apply-chat-template" in extra else {}))

    math, other = cells()
    assert math == {"task": "dllmq_math", "settings": {
        "gen_length": 64, "steps": 8, "block_length": 64, "apply_chat_template": True}}
    assert other == {"task": "other_task", "settings": {"steps": 8}}
    assert cells("--no-apply-chat-template")[0]["settings"]["apply_chat_template"] is False


def test_a_grid_with_a_code_task_needs_the_confirmation_before_any_model_loads(no_model_load):
    from dllmq.sweep import GridError, parse_grid, validate

    raw = {"models": ["tiny-llada-instruct"], "recipes": ["fp16"], "tasks": ["dllmq_code"],
           "include_defaults": False}
    with pytest.raises(GridError, match="dllmq_code executes model-written programs; give "
                                        "`confirm_run_unsafe_code: true`"):
        validate(parse_grid(raw))
    validate(parse_grid({**raw, "confirm_run_unsafe_code": True}))
