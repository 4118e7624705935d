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
# # 05 · Beyond the paper: denoising steps, remasking, and real low-bit weights
#
# The paper's future work names a step-aware analysis (denoising steps vs bits), remasking
# strategies under quantization, and real low-bit kernels for dLLMs. (Its fourth item, Dream
# under weight-activation quantization, is Table 6 in notebook 04.)
#
# **Questions.** (1) Does a quantized dLLM need more denoising steps to recover, i.e. does the
# quantization damage shrink or grow as steps increase? (2) Does low-confidence remasking, which
# trusts the model's own confidences, suffer more from quantization than random remasking?
# (3) What do packed low-bit weights actually save on disk?
#
# **Writes** `figures/fig_beyond_steps.{png,pdf}`, `figures/fig_beyond_remasking.{png,pdf}`,
# `tables/beyond_steps.{csv,md}`, `tables/beyond_remasking.{csv,md}`, `tables/beyond_packed_size.{csv,md}`.

# %% tags=["parameters"]
preset = "default"

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: known noise

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd
from dllmq.harness import model_defaults
from dllmq.report import plot_drops, relative_drops, save_figure, write_table
from dllmq.sampling import LLaDASamplerConfig
from dllmq.study import (
    calibration_spread,
    load_params,
    output_dirs,
    packed_sizes,
    run_study,
    setup_notebook,
    task_specs,
    with_limits,
    write_pivot,
)

# params' `beyond_limits` ({task: items}) caps this notebook's items (none of its cells enters
# the findings of notebook 04): the `full` preset keeps 05's math at the first 1000 items.
P = load_params(preset)
P = with_limits(P, P.get("beyond_limits", {}))
B = P["beyond"]
setup_notebook()
fig_dir, tab_dir = output_dirs(P)
model = P["models"][B["role"]]

# %% [markdown]
# ## (1) Drop against FP by denoising steps, per bit-width
# Each quantized cell is compared with the FP cell at the same number of steps, paired on the
# same items.

# %%
steps = run_study(P, [B["role"]], B["recipes"], categories=[B["category"]], axes={"steps": B["steps"]})
d = relative_drops(steps, within=("steps",)).assign(steps=lambda x: x["steps"].astype(str),
                                                     panel=f"{model} · {B['category']}")
fig = plot_drops(d, x="steps", hue="label", col="panel", x_orders={d["panel"][0]: [str(s) for s in B["steps"]]},
                 panel_width=3.4)
fig.axes[0].set_xlabel("denoising steps")
save_figure(fig, fig_dir / "fig_beyond_steps")
plt.show()
write_pivot(steps.assign(label=steps["recipe"], value=100 * steps["value"], se=100 * steps["stderr"]), "steps",
            tab_dir / "beyond_steps", f"Accuracy (%) on {B['category']} by denoising steps ({model})")

# %% [markdown]
# ## (2) Low-confidence vs random remasking under quantization

# %%
# Low-confidence remasking is the LLaDA sampler's default, which the main grid runs: those cells
# are the main grid's own (looked up, not recomputed, unless `beyond_limits` gives this notebook
# other item counts); only the other strategies get an axis.
assert LLaDASamplerConfig.remasking == "low_confidence"
assert "remasking" not in model_defaults(model).tasks.get(task_specs(P, [B["category"]])[0]["task"], {})
others = [r for r in B["remasking"] if r != "low_confidence"]
parts = {"low_confidence": run_study(P, [B["role"]], B["recipes"], categories=[B["category"]])}
if others:
    axis = run_study(P, [B["role"]], B["recipes"], categories=[B["category"]], axes={"remasking": others})
    parts.update({r: axis[axis["remasking"] == r] for r in others})
rem = pd.concat([parts[r].assign(remasking=r) for r in B["remasking"]], ignore_index=True)
d = relative_drops(rem, within=("remasking",)).assign(panel=f"{model} · {B['category']}")
fig = plot_drops(d, x="label", hue="remasking", col="panel", panel_width=3.4)
for ax in fig.axes:
    ax.tick_params(axis="x", rotation=30)
save_figure(fig, fig_dir / "fig_beyond_remasking")
plt.show()
write_pivot(rem.assign(label=rem["recipe"], value=100 * rem["value"], se=100 * rem["stderr"]), "remasking",
            tab_dir / "beyond_remasking", f"Accuracy (%) on {B['category']} by remasking strategy ({model})")

# %% [markdown]
# ## (3) Packed low-bit weights on disk (compressed-tensors pack-quantized layout)

# %%
packed = packed_sizes(model, B["packed_recipes"], P["calib"], P["device"], seed=P["seed"])
write_table(packed, None, tab_dir / "beyond_packed_size",
            f"Size of the saved weights of {model} (embeddings and LM head stay full precision; "
            "the FP row is named by the dtype it is saved in)")
packed

# %% [markdown]
# ## (4) Calibration seeds: how much does the calibration draw move a drop?
# Quantization is random too: each recipe below is quantized with several calibration draws
# (params `calib_seeds`; the `full` preset sets it) and evaluated on the same items. The spread
# of a drop over seeds (its sd) is set against the items' paired standard error of one run.

# %%
if "calib_seeds" in P:
    seed_drops, spread = calibration_spread(P)
    write_table(spread, None, tab_dir / "beyond_calibration_seeds",
                f"Relative drop (%, + = worse) over calibration seeds {P['calib_seeds']['seeds']} "
                f"({P['models'][P['calib_seeds']['role']]}): calib_sd = sd of the drop over seeds, "
                "item_se = median paired se over items of one run")
    fig = plot_drops(seed_drops.assign(calib_seed=seed_drops["calib_seed"].map(lambda s: f"calibration seed {s}")),
                     x="label", hue="calib_seed", col="category", panel_width=3.4)
    for ax in fig.axes:
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    save_figure(fig, fig_dir / "fig_beyond_calibration_seeds")
    plt.show()
    spread
