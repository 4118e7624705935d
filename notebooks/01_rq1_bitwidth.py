# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: dllmq (.venv)
#     language: python
#     name: dllmq
# ---

# %% [markdown]
# # 01 · RQ1: how does bit-width change what a dLLM can do?
#
# **Question (paper §4.2, findings F1, F2).** Weight-only: is 4-bit near-lossless and 3-bit a
# significant drop? Weight-activation: is W8A8 near-lossless and W4A4 a significant drop?
# Measured on the LLaDA pair (base, instruct), every method, all three task categories, with
# RTN as the baseline every method must beat.
#
# **Writes** `tables/table1_weight_only_general`, `table2_weight_act_general`,
# `table3_weight_only_math_code`, `table4_weight_act_math_code` (CSV + Markdown, the paper's
# layout, each number ± its standard error) and `figures/fig_rq1_bitwidth.{png,pdf}`.
# This notebook evaluates every LLaDA cell; notebooks 02 and 03 read them from the store.

# %% tags=["parameters"]
preset = "default"  # params/<preset>.yaml supplies everything else (papermill -f)

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from dllmq.report import parse_recipe, plot_accuracy, save_figure, set_style
from dllmq.study import load_params, output_dirs, run_study, write_paper_table

P = load_params(preset)
set_style()
fig_dir, tab_dir = output_dirs(P["out_dir"])

# %%
roles = ["llada_base", "llada_instruct"]
recipes = ["fp16", *P["recipes_weight_only"], *P["recipes_weight_act"]]
df = run_study(P, roles, recipes)
df.pivot_table(index=["model", "recipe"], columns="task", values="value", sort=False).mul(100).round(1)

# %% [markdown]
# ## The paper's Tables 1-4, recomputed

# %%
for name in ("table1_weight_only_general", "table2_weight_act_general",
             "table3_weight_only_math_code", "table4_weight_act_math_code"):
    t = write_paper_table(name, df, P, tab_dir)
    print((tab_dir / f"{name}.md").read_text())

# %% [markdown]
# ## Accuracy against bit-width, per method and category

# %%
info = df["recipe"].map(parse_recipe)
cat = (df.assign(setting=info.map(lambda i: i.setting.split("g")[0]), method=info.map(lambda i: i.method),
                 family=info.map(lambda i: "weight-only" if i.weight_only else "weight-act" if i.wbits < 16 else "FP"),
                 value=100 * df["value"], se=100 * df["stderr"]))
fp = cat[cat.family == "FP"]
plots = []
for fam in ("weight-only", "weight-act"):
    sub = cat[cat.family == fam]
    for m in sub.method.unique():  # each method's line starts at the model's FP point
        plots.append(pd.concat([sub[sub.method == m], fp.assign(method=m)]).assign(family=fam))
curves = pd.concat(plots)
curves["panel"] = curves["family"] + " · " + curves["category"]
order = ["FP", "W4A16", "W3A16", "W8A8", "W4A4"]
fig = plot_accuracy(curves, order, hue="method", col="panel", row="model")
save_figure(fig, fig_dir / "fig_rq1_bitwidth")
plt.show()
