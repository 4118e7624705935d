"""`python -m dllmq` commands that need no lm-eval run: quantize (saved weights load back and
compute what the in-memory quantized model computes), bench listing, argument errors."""

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


def test_shipped_models_calibrate_on_the_embedded_corpus_by_default(tmp_path):
    from dllmq.harness import default_calib_source
    from dllmq.models.io import shipped_models

    assert [default_calib_source(m) for m in shipped_models()] == ["embedded"] * len(shipped_models())
    assert default_calib_source(str(make_model_dir(tmp_path / "m"))) is None
    assert default_calib_source(None) is None
