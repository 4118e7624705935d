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
# # 04 · RQ4: does the model matter? Base vs instruct, LLaDA vs Dream
#
# **Question (paper §4.5, findings F7, F8, and everything else judged).** Is the instruct
# model more robust than the base model? Does Dream show the same picture (W4 near-lossless,
# W3 significant even on QA, GPTQ over AWQ)? Beyond the paper: Dream under weight-activation
# quantization, which the paper left out.
#
# **Writes** `tables/table5_dream_weight_only_general`, `tables/table6_dream_weight_act_all`
# (beyond the paper), `figures/fig_rq4_models.{png,pdf}` and `tables/findings.md`: each
# finding F0-F8 judged holds / does not hold / mixed / within noise from this run's numbers and
# standard errors (F0 from notebook 00's outlier tables).

# %% tags=["parameters"]
preset = "default"  # params/<preset>.yaml supplies everything else (papermill -f)

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: known noise

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd
from dllmq.findings import findings_markdown, judge
from dllmq.report import plot_drops, relative_drops, save_figure, write_text
from dllmq.study import (
    category_of,
    findings_frame,
    load_params,
    output_dirs,
    setup_notebook,
    write_paper_table,
)

P = load_params(preset)
setup_notebook()
fig_dir, tab_dir = output_dirs(P)

# %%
# both LLaDA roles x every recipe x every category; Dream: weight-only on QA as the paper's
# Table 5, weight-activation on every category (beyond it)
df = findings_frame(P)
for name in ("table5_dream_weight_only_general", "table6_dream_weight_act_all"):
    write_paper_table(name, df, P, tab_dir)
    print((tab_dir / f"{name}.md").read_text())

# %%
drops = relative_drops(df, by="category")
order = list(dict.fromkeys(drops["label"]))
fig = plot_drops(drops, x="label", hue="model", col="category", x_orders={c: order for c in drops["category"].unique()},
                 panel_width=3.6)
for ax in fig.axes:
    ax.tick_params(axis="x", rotation=70, labelsize=7)
save_figure(fig, fig_dir / "fig_rq4_models")
plt.show()

# %% [markdown]
# ## Findings F0-F8, judged by code

# %%
outliers = pd.read_csv(tab_dir / "outliers_stats.csv") if (tab_dir / "outliers_stats.csv").is_file() else None
if outliers is not None:
    outliers = outliers[outliers["input"] == "clean"]
roles = {role: name for role, name in P["models"].items()}
found = judge(df, category_of(P), roles, outliers)
md = findings_markdown(found, at_zero_margin=judge(df, category_of(P), roles, outliers, margin=0.0))
write_text(tab_dir / "findings.md", md)
print(md)
