"""DLLMEvalLM's per-request progress bars: shown by default (lm-eval's CLI), hidden with
`progress=False` (the sweep, which shows its own bar)."""

import pytest
from dllmq.harness import DLLMEvalLM
from lm_eval.api.instance import Instance

from evalkit import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("progress") / "tiny-llada")


def _run(lm):
    gen = [Instance("generate_until", {}, ("say yes:", {"max_gen_toks": 4, "until": []}), 0)]
    ll = [Instance("loglikelihood", {}, ("say", " yes"), 0)]
    return lm.generate_until(gen), lm.loglikelihood(ll)


def test_progress_bars_follow_the_switch(model_dir, capsys):
    shown = DLLMEvalLM(str(model_dir), mc_num=2, batch_size=2)
    out_shown = _run(shown)
    err = capsys.readouterr().err
    assert "dllmq generate_until" in err and "dllmq loglikelihood" in err
    hidden = DLLMEvalLM(str(model_dir), mc_num=2, batch_size=2, progress=False)
    out_hidden = _run(hidden)
    assert "dllmq" not in capsys.readouterr().err
    assert out_hidden == out_shown   # the switch changes nothing but the bars
    assert "dllmq" not in (_run(hidden.with_settings(batch_size=1)), capsys.readouterr().err)[1]
