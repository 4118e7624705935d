"""`python -m dllmq.tasks.lm_eval` prints the task folder, for `lm_eval --include_path`."""

from . import task_dir

print(task_dir())
