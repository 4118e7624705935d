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
# # 02 · RQ2: which quantization method works best for dLLMs?
#
# **Question (paper §4.3, findings F3, F4, F5).** Weight-only: does GPTQ beat AWQ, except on
# 3-bit code? Weight-activation: do the rotation methods (QuaRot, DuQuant) beat SmoothQuant,
# does SmoothQuant collapse at W4A4, and does DuQuant beat QuaRot?
#
# **Writes** `figures/fig_rq2_methods.{png,pdf}` (drop against FP per method, setting
# and category, with paired intervals) and `tables/rq2_method_ranking.{csv,md}` (mean relative drop per method and
# setting, with its standard error). Reads the cells notebook 01 evaluated.

# %% tags=["parameters"]
preset = "default"  # params/<preset>.yaml supplies everything else (papermill -f)

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: known noise

import matplotlib.pyplot as plt  # noqa: E402
from dllmq.report import plot_drops, rank_drops, relative_drops, save_figure, write_table
from dllmq.study import load_params, output_dirs, run_study, setup_notebook

P = load_params(preset)
setup_notebook()
fig_dir, tab_dir = output_dirs(P)

# %%
roles = ["llada_base", "llada_instruct"]
df = run_study(P, roles, ["fp16", *P["recipes_weight_only"], *P["recipes_weight_act"]], progress=False)

# %%
drops = relative_drops(df, by="category")
fig = plot_drops(drops, x="category", hue="method", col="setting", row="model",
                 x_orders={s: ["qa", "math", "code"] for s in drops["setting"].unique()})
save_figure(fig, fig_dir / "fig_rq2_methods")
plt.show()

# %%
rank = rank_drops(df, ("setting", "method")).sort_values(["setting", "mean_drop_pct"], kind="stable")
write_table(rank, ["mean_drop_pct"], tab_dir / "rq2_method_ranking",
            "Mean relative drop (%) over models and categories, per method: positive = worse, "
            "so smaller is better (± paired bootstrap se)")
rank
