"""Accuracy cost of the int4 LM head and embedding (`realize(model, "w4a16", head="int4")`), paired
on the same items, on the shipped tiny models (CPU, minutes).

    python bench/bench_int4_head.py --out-dir tables      # writes deploy_int4_head.{md,csv}

Per model: the w4a16g128-rtn model (fake quant, float head), its real w4a16 path with the float
head, and with the int4 head + embedding; dllmq.deploy.paired_accuracy on one task, the same
items and seeds; the paired difference (int4 head - float head) with its standard error.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dllmq.deploy import paired_accuracy, paired_summary  # noqa: E402

PAIRS = ((None, "w4a16"), ("w4a16", "w4a16-int4-head"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=REPO / "tables")
    ap.add_argument("--models", default="tiny-llada-base,tiny-dream-base")
    ap.add_argument("--task", default="dllmq_qa")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--mc-num", type=int, default=4)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    rows = []
    for name in a.models.split(","):
        scores = paired_accuracy(name, (None, "w4a16", "w4a16-int4-head"), task=a.task,
                                 limit=a.limit, mc_num=a.mc_num, recipe="w4a16g128-rtn")
        for x, y in PAIRS:
            rows.append({"model": name, "task": a.task, **paired_summary(scores, x, y)})
    rows = [{**r, "a": "fake-quant" if r["a"] == "fp" else r["a"]} for r in rows]
    a.out_dir.mkdir(parents=True, exist_ok=True)
    keys = ["model", "task", "a", "b", "n", "acc_a", "acc_b", "same_score", "diff", "diff_se"]
    with open(a.out_dir / "deploy_int4_head.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md = ["# int4 LM head + embedding vs float head (w4a16g128-rtn, paired on the same items)", "",
          f"Command: `python bench/bench_int4_head.py --limit {a.limit} --mc-num {a.mc_num}`; "
          "CPU, fp32; fake-quant = the quantized model's own (fake) w4a16 path.", "",
          "| model | task | a | b | n | acc a | acc b | same score | b - a (s.e.) |",
          "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['task']} | {r['a']} | {r['b']} | {r['n']} | {r['acc_a']:.3f} | "
           f"{r['acc_b']:.3f} | {r['same_score']:.2f} | {r['diff']:+.3f} ({r['diff_se']:.3f}) |"
           for r in rows]
    (a.out_dir / "deploy_int4_head.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
