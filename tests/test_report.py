import math

import pandas as pd
import pytest
from dllmq.report import (
    FAILS,
    HOLDS,
    MIXED,
    NOISE,
    Check,
    combine,
    degradation_level,
    mean_se,
    paper_table,
    parse_recipe,
    recipe_label,
    rel_drop,
    save_figure,
    table_markdown,
)


def test_parse_recipe():
    r = parse_recipe("w4a16g128-gptq")
    assert (r.setting, r.method, r.wbits, r.abits, r.weight_only) == ("W4A16g128", "GPTQ", 4, 16, True)
    r = parse_recipe("w4a4-duquant")
    assert (r.setting, r.method, r.weight_only) == ("W4A4", "DuQuant", False)
    assert parse_recipe("fp").setting == "FP"
    with pytest.raises(ValueError, match="w<bits>a<bits>"):
        parse_recipe("int4")
    assert [recipe_label(r) for r in ("fp16", "w4a16g128-gptq", "w4a4-quarot")] == [
        "FP", "W4A16 GPTQ", "W4A4 QuaRot"]


@pytest.mark.parametrize("drop,level", [(0.3, "negligible"), (0.99, "negligible"), (1.0, "moderate"),
                                        (3.9, "moderate"), (4.0, "significant"), (40, "significant"),
                                        (-2.0, "negligible")])
def test_degradation_levels(drop, level):
    assert degradation_level(drop) == level


def test_paper_numbers_reproduce_printed_drop():
    # Table 1, LLaDA-8B-Base: FP avg 65.5, W4 AWQ avg 63.2 printed drop -3.5 %
    d, _ = rel_drop(63.2, 0.0, 65.5, 0.0)
    assert round(-d, 1) == -3.5


def test_mean_se_and_drop_se():
    m, s = mean_se([50.0, 70.0], [3.0, 4.0])
    assert m == 60.0 and math.isclose(s, 2.5)
    d, dse = rel_drop(45.0, 1.0, 50.0, 0.0)
    assert math.isclose(d, 10.0) and math.isclose(dse, 2.0)


def _df():
    rows = []
    for model, fp in (("a", 0.8), ("b", 0.6)):
        for recipe, f in (("fp16", 1.0), ("w4a16g128-gptq", 0.99), ("w3a16g128-gptq", 0.8)):
            for task in ("qa", "math"):
                rows.append(dict(model=model, recipe=recipe, task=task, value=fp * f, stderr=0.01))
    return pd.DataFrame(rows)


def test_paper_table_layout_and_recomputed_drop():
    t = paper_table(_df(), ["a", "b"], ["w4a16g128-gptq", "w3a16g128-gptq"], {"all": ["qa", "math"]})
    assert list(t["setting"]) == ["FP", "W4A16g128", "W3A16g128"] * 2
    row = t[(t.model == "a") & (t.setting == "W3A16g128")].iloc[0]
    assert math.isclose(row["all_avg"], 64.0) and math.isclose(row["all_drop_pct"], 20.0)
    assert math.isclose(row["all_avg_se"], math.sqrt(2) / 2)
    md = table_markdown(t, ["qa", "math", "all_avg", "all_drop_pct"])
    assert "-20.0 ±" in md and "(significant)" in md


def test_incomplete_rows_are_left_out():
    df = _df()
    df = df[~((df.recipe == "w3a16g128-gptq") & (df.task == "math"))]
    t = paper_table(df, ["a"], ["w4a16g128-gptq", "w3a16g128-gptq"], {"all": ["qa", "math"]})
    assert list(t["setting"]) == ["FP", "W4A16g128"]


def test_check_verdicts_respect_noise():
    assert Check("drop", 0.5, 0.5, "<", 4.0).verdict == HOLDS
    assert Check("drop", 3.5, 0.5, "<", 4.0).verdict == NOISE
    assert Check("drop", 9.0, 1.0, "<", 4.0).verdict == FAILS
    assert Check("gain", 3.0, 1.0, ">", 0.0).verdict == HOLDS
    hold, fail = Check("x", 0, 0.1, "<", 1), Check("x", 2, 0.1, "<", 1)
    assert combine([hold, hold]) == HOLDS and combine([fail, fail]) == FAILS
    assert combine([hold, fail]) == MIXED
    assert combine([hold, hold, fail], majority=True) == HOLDS
    noise = Check("x", 1, 1, "<", 1)
    assert combine([hold, noise, noise, noise], majority=True) == NOISE
    assert combine([hold, fail, noise], majority=True) == MIXED


def test_save_figure_is_byte_stable(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(path):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 3, 2])
        save_figure(fig, path)
        plt.close(fig)

    draw(tmp_path / "f1")
    first = [(tmp_path / f"f1{e}").read_bytes() for e in (".png", ".pdf")]
    draw(tmp_path / "f1")
    assert first == [(tmp_path / f"f1{e}").read_bytes() for e in (".png", ".pdf")]


def test_model_slug_is_a_single_file_name_part():
    from dllmq.report import model_slug

    assert [model_slug(n) for n in ("GSAI-ML/LLaDA-8B-Base", "/tmp/standin/llada-8b/", "tiny-ar")] \
        == ["LLaDA-8B-Base", "llada-8b", "tiny-ar"]
