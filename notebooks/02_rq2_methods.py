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
# **Writes** `figures/fig_rq2_methods.{png,pdf}` (accuracy relative to FP per method, setting
# and category) and `tables/rq2_method_ranking.{csv,md}` (mean relative drop per method and
# setting, with its standard error). Reads the cells notebook 01 evaluated.

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
from dllmq.report import mean_se, write_table  # noqa: E402
from dllmq.study import relative_drops  # noqa: E402

roles = ["llada_base", "llada_instruct"]
df = run_study(P, roles, ["fp16", *P["recipes_weight_only"], *P["recipes_weight_act"]], progress=False)

# %%
rel = relative_drops(df).assign(value=lambda d: 100 - d["drop"])
rel["panel"] = rel["setting"]
fig = plot_accuracy(rel.rename(columns={"category": "cat"}), ["qa", "math", "code"], hue="method",
                    col="panel", row="model", x="cat", ylabel="accuracy, % of FP")
save_figure(fig, fig_dir / "fig_rq2_methods")
plt.show()

# %%
rank = []
for (setting, method), g in rel.groupby(["setting", "method"], sort=False):
    m, se = mean_se(list(100 - g["value"]), list(g["se"]))
    rank.append({"model": "LLaDA pair", "setting": setting, "method": method,
                 "mean_drop_pct": m, "mean_drop_pct_se": se})
rank = pd.DataFrame(rank).sort_values(["setting", "mean_drop_pct"])
write_table(rank, ["mean_drop_pct"], tab_dir / "rq2_method_ranking",
            "Mean relative drop (%) over models and categories, per method (lower is better)")
rank
