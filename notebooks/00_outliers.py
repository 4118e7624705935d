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
# # 00 · Activation outliers in masked diffusion LLMs
#
# **Question (paper §3, finding F0).** Do dLLMs have activation outliers at the inputs of
# their linear layers, of both kinds (normal: large on a few channels for every token;
# massive: huge on a few tokens), with the massive ones at the FFN down projection? And do
# a dLLM's massive outliers spread over more tokens than those of the autoregressive model it
# came from?
#
# **Writes** `figures/fig1_outliers_<model>.{png,pdf}` (the paper's Figures 1, 2, B1, B2: one
# 3-D token x channel x |value| panel per linear kind), `tables/outliers_stats.{csv,md}`
# (one row per model x input x layer x linear kind) and `tables/outliers_spread.{csv,md}`
# (the dLLM-vs-AR comparison). Criteria for "normal" and "massive" are stated in
# `dllmq.outliers`. Inputs are measured on clean text and on partially masked text, which is
# what a dLLM sees at an intermediate denoising step.

# %% tags=["parameters"]
preset = "default"  # params/<preset>.yaml supplies everything else

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: known noise

import matplotlib.pyplot as plt  # noqa: E402
from dllmq.outliers import plot_activation_grid
from dllmq.report import model_slug, save_figure, write_table
from dllmq.study import load_params, outlier_stats, output_dirs, setup_notebook

P = load_params(preset)
setup_notebook()
fig_dir, tab_dir = output_dirs(P)

# %% [markdown]
# ## Statistics per linear input, clean and partially masked text

# %%
stats, acts_for_plot = outlier_stats(P)
write_table(stats, None, tab_dir / "outliers_stats", "")
stats.pivot_table(index=["model", "input"], columns="kind", values="peak_to_median", aggfunc="max").round(1)

# %% [markdown]
# ## Figures 1-2: token x channel x |activation| at the four linear inputs

# %%
for name, acts in acts_for_plot.items():
    layer = next(iter(acts))[0]
    fig = plot_activation_grid(acts, [(layer, k) for k in ("q", "o", "gate", "down")],
                               f"{name}: input activations of layer {layer}")
    save_figure(fig, fig_dir / f"fig1_outliers_{model_slug(name)}")
    plt.show()
    plt.close(fig)

# %% [markdown]
# ## Do massive outliers spread over more tokens in the dLLM than in its AR parent?
# `tiny-dream-base` was initialised from `tiny-ar` and adapted to masked diffusion (Dream's
# recipe), so the pair isolates what diffusion training does. Token spread = fraction of tokens
# with at least one massive entry at the down-projection input, clean text.

# %%
down = stats[(stats.kind == "down") & (stats.input == "clean")]
spread = down.groupby(["model", "role"], as_index=False)[["massive_token_spread", "n_massive", "peak_to_median"]].mean()
write_table(spread, None, tab_dir / "outliers_spread", "")
spread
