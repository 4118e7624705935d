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
import matplotlib

matplotlib.use("Agg")
import dllmq
import matplotlib.pyplot as plt
import pandas as pd
import torch
from dllmq.data import calibration_set
from dllmq.outliers import capture_linear_inputs, mask_tokens, plot_activation_grid, stats_table
from dllmq.report import model_slug, save_figure, set_style
from dllmq.study import load_params, output_dirs

P = load_params(preset)
models, device, seed = P["models"], P["device"], P["seed"]
set_style()
fig_dir, tab_dir = output_dirs(P["out_dir"])

# %% [markdown]
# ## Statistics per linear input, clean and partially masked text

# %%
rows, acts_for_plot = [], {}
for role in P["outlier_models"]:
    name = models[role]
    model = dllmq.load(name, device=device)
    tok = dllmq.load_tokenizer(name)
    ids = calibration_set(tok, P["calib_source"], P["outlier_samples"], P["outlier_seqlen"],
                          seed=seed, split=P["calib_split"]).input_ids
    layers = [l for l in P["outlier_layers"] if l < len(model.blocks)]
    inputs = {"clean": ids}
    if not model.config.causal:  # an AR model never sees mask tokens
        g = torch.Generator().manual_seed(seed)
        ratio = P["outlier_mask_ratio"]
        inputs[f"masked {ratio:.0%}"] = mask_tokens(ids, ratio, model.config.mask_token_id, g)
    for input_kind, x in inputs.items():
        for r in stats_table(model, [x], layers):
            rows.append({"model": name, "role": role, "input": input_kind, **r})
    acts_for_plot[name] = capture_linear_inputs(model, ids[:1], [layers[-1]], ("q", "o", "gate", "down"))
    del model

stats = pd.DataFrame(rows)
stats["top_channels"] = stats["top_channels"].map(lambda c: " ".join(map(str, c)))
stats.to_csv(tab_dir / "outliers_stats.csv", index=False, float_format="%.4g")
(tab_dir / "outliers_stats.md").write_text(stats.to_markdown(index=False, floatfmt=".3g") + "\n")
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
spread.to_csv(tab_dir / "outliers_spread.csv", index=False, float_format="%.4g")
(tab_dir / "outliers_spread.md").write_text(spread.to_markdown(index=False, floatfmt=".3g") + "\n")
spread
