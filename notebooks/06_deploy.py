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
# # 06 · Which recipe should I deploy? Speed, memory and accuracy in one picture
#
# The study's accuracy tables are fake quantization; `dllmq.kernels` runs the same recipes with
# real low-bit arithmetic. This notebook puts the three things a deployment trades against each
# other side by side, per architecture:
# - **speed**: the denoising step at batch 8 (prompt 256 + gen 256, block 32) relative to the
#   official bf16 code, and **memory**: weight GiB, both from `tables/bench_kernels.csv` (one
#   H200, LLaDA-8B / Dream-7B shapes; `bench/bench_kernels.py`, committed, not rerun here);
# - **accuracy**: the tiny shipped models on the embedded QA task: the study's committed tables
#   for the integer recipes (the real int8 / w4a16 paths compute what their fake-quant twins do,
#   tests/test_kernels.py), and for fp8, which the study does not cover, the float model's study
#   accuracy plus the paired difference (real fp8 - float) measured here on the same items and
#   seeds (the first `fp8_items` of the task); its standard error combines the float model's
#   and the paired difference's. The real fp8 path is also compared with its fake-quant twin.
#
# **Writes** `figures/fig_deploy.{png,pdf}`, `tables/deploy.{csv,md}`.

# %% tags=["parameters"]
preset = "default"
fp8_items = 50  # items of the paired fp8 run (at most the preset's limit)

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from dllmq.deploy import paired_accuracy, paired_summary
from dllmq.report import save_figure, set_style, write_table
from dllmq.study import load_params, output_dirs, repo_path, role_tasks

P = load_params(preset)
set_style()
fig_dir, tab_dir = output_dirs(P)
committed = repo_path("tables")
qa = P["tasks"]["qa"][0]
limit = fp8_items if P["limit"] is None else min(fp8_items, P["limit"])  # null: every item

# %% [markdown]
# ## Speed and memory (8B shapes, one H200)

# %%
bench = pd.read_csv(committed / "bench_kernels.csv", dtype={"batch": str})
step = bench[(bench.measure == "step_ms") & (bench.batch == "8")].set_index(["arch", "backend"])
weights = bench[bench.measure == "weight_gib"].set_index(["arch", "backend"])
speed = (step["value"].rdiv(step["value"].xs("official-bf16", level="backend")
                            .reindex(step.index, level="arch"))).rename("step_speedup")
hw = pd.concat([speed, weights["value"].rename("weight_gib")], axis=1).reset_index()
hw

# %% [markdown]
# ## Accuracy (tiny models, dllmq_qa)
#
# Integer recipes: the study's committed tables. fp8: a paired run now (float model, fp8 fake
# twin, fp8 real; the same items and Monte Carlo seeds).

# %%
study = pd.concat([pd.read_csv(tab_dir / f) for f in (  # this preset's study tables
    "table1_weight_only_general.csv", "table2_weight_act_general.csv",
    "table5_dream_weight_only_general.csv", "table6_dream_weight_act_all.csv")])
study = study.drop_duplicates(["model", "recipe"])[["model", "recipe", "qa_avg", "qa_avg_se"]]
fp8 = []
for role in ("llada_base", "dream_base"):
    name = P["models"][role]
    mc_num = role_tasks(P, role, ["qa"])[0]["settings"].get("mc_num", 4)  # the study's, per role
    scores = paired_accuracy(name, (None, "fp8-fake", "fp8"), task=qa["task"], limit=limit,
                             mc_num=mc_num)
    for a, b in ((None, "fp8"), ("fp8-fake", "fp8")):
        s = paired_summary(scores, a, b)
        fp8.append({"model": name, **s})
fp8 = pd.DataFrame(fp8)
print(fp8.to_string(index=False))

# %%
# each deployable backend, with the recipe whose accuracy it runs at
DEPLOY = {"bf16-compiled": "fp16", "w8a8-fp8": "fp8", "w8a8-int8": "w8a8-smoothquant",
          "w4a16": "w4a16g128-gptq"}
ARCH = {"llada": P["models"]["llada_base"], "Dream": P["models"]["dream_base"]}
rows = []
for (arch, backend), r in hw.set_index(["arch", "backend"]).iterrows():
    if backend not in DEPLOY:
        continue
    model, recipe = ARCH[arch], DEPLOY[backend]
    if recipe == "fp8":  # the float model's accuracy + the paired fp8 - float difference
        f = fp8[(fp8.model == model) & (fp8.a == "fp")].iloc[0]
        fp = study[(study.model == model) & (study.recipe == "fp16")].iloc[0]
        acc = fp.qa_avg + 100 * f["diff"]
        se = (fp.qa_avg_se**2 + (100 * f.diff_se) ** 2) ** 0.5  # item sampling + the paired diff
    else:
        s = study[(study.model == model) & (study.recipe == recipe)].iloc[0]
        acc, se = s.qa_avg, s.qa_avg_se
    rows.append({"model": model, "setting": backend, "method": recipe, "arch": arch,
                 "backend": backend, "recipe": recipe,
                 "step_speedup": r.step_speedup, "weight_gib": r.weight_gib, "qa_acc": acc,
                 "qa_acc_se": se})
deploy = pd.DataFrame(rows)
write_table(deploy, ["step_speedup", "weight_gib", "qa_acc"], tab_dir / "deploy",
            "Which recipe to deploy: step speed-up over official bf16 (batch 8, H200, 8B shapes), "
            "weight GiB (full depth), accuracy on the tiny model (dllmq_qa)")
deploy

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
for ax, arch in zip(axes, ARCH, strict=True):
    d = deploy[deploy.arch == arch]
    sc = ax.scatter(d.step_speedup, d.qa_acc, s=40 * d.weight_gib, c=d.weight_gib, cmap="viridis_r",
                    vmin=0, vmax=deploy.weight_gib.max(), edgecolor="k", alpha=0.85)
    ax.errorbar(d.step_speedup, d.qa_acc, yerr=d.qa_acc_se.fillna(0), fmt="none", ecolor="grey")
    for i, (_, r) in enumerate(d.sort_values("step_speedup").iterrows()):
        ax.annotate(f"{r.backend} ({r.weight_gib:.1f} GiB)", (r.step_speedup, r.qa_acc),
                    textcoords="offset points", xytext=(8, (-18, 14, 30)[i % 3]), fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0.9, 1.3 * d.step_speedup.max())
    ax.set(title=f"{arch}: speed and memory at 8B shapes,\naccuracy on {ARCH[arch]}",
           xlabel="step speed-up over official bf16 (batch 8)")
axes[0].set_ylabel("dllmq_qa accuracy (%)")
fig.colorbar(sc, ax=axes, label="weight GiB (full depth)")
save_figure(fig, fig_dir / "fig_deploy")

# %% [markdown]
# **Reading it.** Right is faster, up is more accurate, small and light dots need less memory.
# fp8 (W8A8 e4m3) is the fastest backend on Hopper at batch 8, and at batch 1 once the step
# runs under CUDA graphs (tables/bench_kernels.md: w8a8-fp8-graphs; without graphs a batch-1
# step is launch-bound and fp8's extra kernels cost more than it saves), and its real path
# scores every item as its fake-quant twin does (the paired table above: same_score 1.0);
# W4A16 is the smallest but no faster than compiled bf16; int8 saves fp8's memory without its
# speed. On the tiny models the accuracy differences between these recipes are within one standard error; the paper's 8B
# checkpoints (notebook 04, `paper` preset) decide the accuracy side at scale.
