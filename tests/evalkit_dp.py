"""Run by tests/test_eval.py under `accelerate launch --num_processes 2 --cpu`: evaluate the
tiny tasks with DLLMEvalLM and write per-sample responses (rank 0) to a JSON file."""

import json
import sys
from pathlib import Path

import lm_eval
from dllmq.harness import DLLMEvalLM
from lm_eval.tasks import TaskManager

model_dir, task_dir, out = sys.argv[1:4]
lm = DLLMEvalLM(model_dir, mc_num=4, batch_size=4)
res = lm_eval.simple_evaluate(model=lm, tasks=["tiny_mc", "tiny_gen"], log_samples=True,
                              task_manager=TaskManager(include_path=task_dir,
                                                       include_defaults=False))
if res is not None:
    Path(out).write_text(json.dumps({"world_size": lm.world_size,
               "samples": {t: {s["doc_id"]: s["resps"] for s in xs}
                           for t, xs in res["samples"].items()},
               "results": {t: {k: v for k, v in r.items() if isinstance(v, float)}
                           for t, r in res["results"].items()}},
              default=float))
