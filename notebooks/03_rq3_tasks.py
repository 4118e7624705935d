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
# # 03 · RQ3: which tasks suffer most?
#
# **Question (paper §4.4, finding F6).** Do math and code degrade more than general QA under
# the same quantization? The paper argues that multi-step generation accumulates errors.
#
# **Writes** `figures/fig_rq3_tasks.{png,pdf}` (relative drop per category, per setting) and
# `tables/rq3_task_sensitivity.{csv,md}` (mean relative drop per category and setting, positive =
# worse, with its paired standard error and the verdict rule's word at 4 %).

# %% tags=["parameters"]
preset = "default"  # params/<preset>.yaml supplies everything else (papermill -f)

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: known noise

import matplotlib.pyplot as plt  # noqa: E402
from dllmq.report import plot_drops, rank_drops, save_figure, write_table
from dllmq.stats import interval
from dllmq.study import load_params, output_dirs, run_study, setup_notebook

P = load_params(preset)
setup_notebook()
fig_dir, tab_dir = output_dirs(P)

# %%
roles = ["llada_base", "llada_instruct"]
df = run_study(P, roles, ["fp16", *P["recipes_weight_only"], *P["recipes_weight_act"]], progress=False)

# %%
summary = rank_drops(df, ("setting", "category"))
write_table(summary.rename(columns={"category": "method"}), ["mean_drop_pct"], tab_dir / "rq3_task_sensitivity",
            "Mean relative drop (%) per task category over methods and models: positive = worse "
            "(the Method column holds the category; ± paired bootstrap se)")
summary

# %%
lo_hi = [interval(m, se) for m, se in zip(summary["mean_drop_pct"], summary["mean_drop_pct_se"], strict=True)]
plot_df = summary.assign(drop=summary["mean_drop_pct"], lo=[a for a, _ in lo_hi], hi=[b for _, b in lo_hi],
                         panel="mean over methods and models")
fig = plot_drops(plot_df, x="setting", hue="category", col="panel",
                 x_orders={"mean over methods and models": ["W4A16", "W3A16", "W8A8", "W4A4"]},
                 ylabel="mean drop vs FP (%, + = worse)", panel_width=3.4)
save_figure(fig, fig_dir / "fig_rq3_tasks")
plt.show()
