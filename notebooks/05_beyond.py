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
import matplotlib

matplotlib.use("Agg")
import tempfile
from pathlib import Path

import dllmq
import matplotlib.pyplot as plt
import pandas as pd
from dllmq.data import calibration_set
from dllmq.quant import quantize_
from dllmq.quant.export import save_quantized
from dllmq.report import plot_accuracy, recipe_label, save_figure, set_style
from dllmq.study import load_params, output_dirs, run_study, write_pivot

P = load_params(preset)
B = P["beyond"]
set_style()
fig_dir, tab_dir = output_dirs(P["out_dir"])

# %% [markdown]
# ## (1) Accuracy against denoising steps, per bit-width

# %%
steps = run_study(P, [B["role"]], B["recipes"], categories=[B["category"]], axes={"steps": B["steps"]})
steps = steps.assign(label=steps["recipe"].map(recipe_label), value=100 * steps["value"],
                     se=100 * steps["stderr"], panel=f"{P['models'][B['role']]} · {B['category']}",
                     steps_label=steps["steps"].astype(str))
fig = plot_accuracy(steps, [str(s) for s in B["steps"]], hue="label", col="panel", x="steps_label",
                    ylabel="accuracy (%)")
fig.axes[0].set_xlabel("denoising steps")
save_figure(fig, fig_dir / "fig_beyond_steps")
plt.show()
write_pivot(steps, "steps", tab_dir / "beyond_steps",
            f"Accuracy (%) on {B['category']} by denoising steps ({P['models'][B['role']]})")

# %% [markdown]
# ## (2) Low-confidence vs random remasking under quantization

# %%
rem = run_study(P, [B["role"]], B["recipes"], categories=[B["category"]],
                axes={"remasking": B["remasking"]})
rem = rem.assign(label=rem["recipe"].map(recipe_label), value=100 * rem["value"],
                 se=100 * rem["stderr"], panel=f"{P['models'][B['role']]} · {B['category']}")
fig = plot_accuracy(rem, list(dict.fromkeys(rem["label"])), hue="remasking", col="panel", x="label",
                    ylabel="accuracy (%)")
for ax in fig.axes:
    ax.tick_params(axis="x", rotation=45)
save_figure(fig, fig_dir / "fig_beyond_remasking")
plt.show()
write_pivot(rem, "remasking", tab_dir / "beyond_remasking",
            f"Accuracy (%) on {B['category']} by remasking strategy ({P['models'][B['role']]})")

# %% [markdown]
# ## (3) Packed low-bit weights on disk (compressed-tensors pack-quantized layout)

# %%
rows = []
name = P["models"][B["role"]]
tok = dllmq.load_tokenizer(name)
calib = calibration_set(tok, P["calib"]["source"], P["calib"]["samples"], P["calib"]["seqlen"], seed=P["seed"])
for recipe in B["packed_recipes"]:
    model = dllmq.load(name, device=P["device"])
    with tempfile.TemporaryDirectory() as d:
        if recipe == "fp16":
            dllmq.save_pretrained(model, d)
        else:
            quantize_(model, recipe, calib, progress=False)
            save_quantized(model, d)
        size = sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))
    rows.append({"recipe": recipe, "MB": size / 1e6})
packed = pd.DataFrame(rows)
packed["vs FP (fp32 on CPU)"] = packed["MB"] / packed["MB"].iloc[0]
packed.to_csv(tab_dir / "beyond_packed_size.csv", index=False, float_format="%.4g")
(tab_dir / "beyond_packed_size.md").write_text(
    f"Size of the saved weights of {name} (embeddings and LM head stay full precision)\n\n"
    + packed.to_markdown(index=False, floatfmt=".3g") + "\n")
packed
