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
# `tables/rq3_task_sensitivity.{csv,md}` (mean relative drop per category and family of
# settings, with its standard error and the paper's degradation level).

# %% tags=["parameters"]
preset = "default"  # params/<preset>.yaml supplies everything else (papermill -f)

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from dllmq.report import plot_accuracy, save_figure, set_style
from dllmq.study import load_params, output_dirs, run_study

P = load_params(preset)
set_style()
fig_dir, tab_dir = output_dirs(P["out_dir"])

# %%
from dllmq.report import degradation_level, mean_se, write_table  # noqa: E402
from dllmq.study import relative_drops  # noqa: E402

roles = ["llada_base", "llada_instruct"]
df = run_study(P, roles, ["fp16", *P["recipes_weight_only"], *P["recipes_weight_act"]], progress=False)

# %%
drops = relative_drops(df)
summary = []
for (setting, category), g in drops.groupby(["setting", "category"], sort=False):
    m, se = mean_se(list(g["drop"]), list(g["se"]))
    summary.append({"model": "LLaDA pair", "setting": setting, "method": category,
                    "mean_drop_pct": m, "mean_drop_pct_se": se, "level": degradation_level(m)})
summary = pd.DataFrame(summary)
write_table(summary, ["mean_drop_pct"], tab_dir / "rq3_task_sensitivity",
            "Mean relative drop (%) per task category (the Method column holds the category)")
summary

# %%
plot_df = summary.rename(columns={"method": "category", "mean_drop_pct": "value", "mean_drop_pct_se": "se"})
plot_df["panel"] = "all methods"
fig = plot_accuracy(plot_df, ["W4A16", "W3A16", "W8A8", "W4A4"], hue="category", col="panel",
                    ylabel="mean relative drop (%)")
save_figure(fig, fig_dir / "fig_rq3_tasks")
plt.show()
