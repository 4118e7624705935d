import math

import numpy as np
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
    paper_table,
    parse_recipe,
    rank_drops,
    recipe_label,
    relative_drops,
    save_figure,
    table_markdown,
    write_table,
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


def _scores(acc: float, n: int, lose: int = 0, gain: int = 0) -> dict:
    """n items with round(acc * n) correct; `lose` correct items turned wrong and `gain` wrong
    items turned right (so two such cells are paired on the same items)."""
    k = round(acc * n)
    x = np.array([1.0] * k + [0.0] * (n - k))
    x[:lose] = 0.0
    x[k:k + gain] = 1.0
    return {(i, 0): float(v) for i, v in enumerate(x)}


def _df(n=200):
    rows = []
    for model, fp in (("a", 0.8), ("b", 0.6)):
        for recipe, lose in (("fp16", 0), ("w4a16g128-gptq", 0), ("w3a16g128-gptq", round(0.2 * fp * n))):
            for task in ("qa", "math"):
                sc = _scores(fp, n, lose=lose)
                v = np.mean(list(sc.values()))
                rows.append(dict(model=model, recipe=recipe, task=task, category=task, value=v,
                                 stderr=float(np.std(list(sc.values()), ddof=1) / np.sqrt(n)), scores=sc))
    return pd.DataFrame(rows)


def test_paper_table_layout_and_recomputed_paired_drop():
    t = paper_table(_df(), ["a", "b"], ["w4a16g128-gptq", "w3a16g128-gptq"], {"all": ["qa", "math"]})
    assert list(t["setting"]) == ["FP", "W4A16g128", "W3A16g128"] * 2
    row = t[(t.model == "a") & (t.setting == "W3A16g128")].iloc[0]
    assert math.isclose(row["all_avg"], 64.0) and math.isclose(row["all_drop_pct"], 20.0, abs_tol=1e-9)
    # the average's se: two tasks of 200 items at p = 0.64, independent
    assert math.isclose(row["all_avg_se"], 100 * math.sqrt(2 * 0.64 * 0.36 / 199) / 2, rel_tol=1e-6)
    # paired: far below the unpaired delta-method se of the old tables (about 3.4 %)
    assert 0 < row["all_drop_pct_se"] < 2.5
    w4 = t[(t.model == "a") & (t.setting == "W4A16g128")].iloc[0]
    assert w4["all_drop_pct"] == 0  # identical answers: the se is one item's worth, not 0
    assert w4["all_drop_pct_se"] == pytest.approx(100 / (400 * 0.8), rel=0.05)
    md = table_markdown(t, ["qa", "math", "all_avg", "all_drop_pct"])
    assert "| 20.0 ±" in md and "(significant)" in md and "(near-lossless)" in md
    assert "drop % (+ = worse)" in md and "-20.0" not in md


def test_relative_drops_sign_and_rank():
    df = _df()
    rel = relative_drops(df)
    assert set(rel["recipe"]) == {"w4a16g128-gptq", "w3a16g128-gptq"}
    assert (rel[rel.recipe == "w3a16g128-gptq"]["drop"] > 19).all()
    rank = rank_drops(df, ("setting", "method"))
    best = rank.sort_values("mean_drop_pct").iloc[0]
    assert best["setting"] == "W4A16" and best["mean_drop_pct"] == 0  # lower drop = better, positive = worse
    w3 = rank[rank.setting == "W3A16"].iloc[0]
    assert math.isclose(w3["mean_drop_pct"], 20.0, abs_tol=1e-9) and w3["level"] == "significant"


def test_unpaired_cells_are_an_error():
    df = _df()
    i = df.index[(df.model == "a") & (df.recipe == "w3a16g128-gptq") & (df.task == "qa")][0]
    df.at[i, "scores"] = {k: v for k, v in df.at[i, "scores"].items() if k[0] < 150}
    with pytest.raises(ValueError, match="not scored on the same items"):
        paper_table(df, ["a"], ["w3a16g128-gptq"], {"all": ["qa", "math"]})
    with pytest.raises(ValueError, match="per-item"):
        paper_table(df.drop(columns="scores"), ["a"], ["w3a16g128-gptq"], {"all": ["qa"]})


def test_incomplete_rows_are_left_out():
    df = _df()
    df = df[~((df.recipe == "w3a16g128-gptq") & (df.task == "math"))]
    t = paper_table(df, ["a"], ["w4a16g128-gptq", "w3a16g128-gptq"], {"all": ["qa", "math"]})
    assert list(t["setting"]) == ["FP", "W4A16g128"]


def test_write_table_is_atomic_and_plain_frames_pass(tmp_path):
    t = pd.DataFrame({"recipe": ["fp16", "w4"], "MB": [20.0, 5.0]})
    write_table(t, None, tmp_path / "x", "Sizes")
    assert (tmp_path / "x.md").read_text().startswith("Sizes\n\n| recipe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.md"]


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


def test_write_pivot_keeps_numbers_in_csv_and_se_in_markdown(tmp_path):
    from dllmq.study import write_pivot

    df = pd.DataFrame({"label": ["FP", "FP", "W4"], "steps": [8, 16, 8], "value": [50.0, 60.0, 40.0],
                       "se": [5.0, 4.0, 5.0]})
    write_pivot(df, "steps", tmp_path / "p", "Accuracy")
    csv = pd.read_csv(tmp_path / "p.csv")
    assert list(csv.columns) == ["label", "8", "16", "8_se", "16_se"] and csv.loc[0, "16"] == 60.0
    md = (tmp_path / "p.md").read_text()
    assert "| FP | 50.0 ± 5.0 | 60.0 ± 4.0 |" in md and "| W4 | 40.0 ± 5.0 | - |" in md
