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
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: known noise

import matplotlib.pyplot as plt  # noqa: E402
from dllmq.report import plot_drops, relative_drops, rq1_panels, save_figure
from dllmq.study import load_params, output_dirs, run_study, setup_notebook, write_paper_table

P = load_params(preset)
setup_notebook()
fig_dir, tab_dir = output_dirs(P)

# %%
roles = ["llada_base", "llada_instruct"]
recipes = ["fp16", *P["recipes_weight_only"], *P["recipes_weight_act"]]
df = run_study(P, roles, recipes)
df.pivot_table(index=["model", "recipe"], columns="task", values="value", sort=False).mul(100).round(1)

# %% [markdown]
# ## The paper's Tables 1-4, recomputed
# Accuracy ± standard error over items; drop against FP ± its paired standard error
# (positive = worse), with "near-lossless" / "significant" only where the ± 2 se interval
# lies wholly below / above 4 %.

# %%
for name in ("table1_weight_only_general", "table2_weight_act_general",
             "table3_weight_only_math_code", "table4_weight_act_math_code"):
    t = write_paper_table(name, df, P, tab_dir)
    print((tab_dir / f"{name}.md").read_text())

# %% [markdown]
# ## Drop against FP by bit-width, per method and category
# Rows: weight-only and weight-activation settings (each panel shows only its own settings);
# x: setting and model; bars: the paired ± 2 se interval. Dashed: the 4 % threshold.

# %%
panels, x_orders = rq1_panels(relative_drops(df, by="category"))
fig = plot_drops(panels, x="x", hue="method", col="category", row="family", x_orders=x_orders)
save_figure(fig, fig_dir / "fig_rq1_bitwidth")
plt.show()
