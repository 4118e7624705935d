"""dllmq.deploy: paired accuracy of real low-bit paths (a few items of the shipped tiny model)."""

import pytest
from dllmq.deploy import paired_accuracy, paired_summary

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paired_accuracy_of_a_recipe_and_a_variant():
    """The fake-quant w4a16 model (None) and its real path score every item identically (the
    same weights, bit for bit on CPU); the int4-head variant runs on the same items."""
    scores = paired_accuracy("tiny-llada-base", (None, "w4a16", "w4a16-int4-head"), limit=6,
                             mc_num=1, recipe="w4a16g128-rtn")
    assert [len(v) for v in scores.values()] == [6, 6, 6]
    assert scores[None] == scores["w4a16"]
    s = paired_summary(scores, "w4a16", "w4a16-int4-head")
    assert s["n"] == 6 and s["diff"] == pytest.approx(s["acc_b"] - s["acc_a"])
