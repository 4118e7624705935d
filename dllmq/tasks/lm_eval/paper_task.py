"""`PaperTask`: an lm-eval task with the paper's shots whose data may come from a local directory.

The paper task files (`paper/*.yaml`) reference lm-eval's own tasks and groups and swap in this
class (`class: !function dllmq.tasks.lm_eval.paper_task.PaperTask`), so every prompt, filter and
metric is lm-eval's and only these change:
- `num_fewshot` comes from `dllmq_settings.yaml` (Appendix A), looked up by the task's name;
- generation tasks get the paper's generation length as lm-eval's `max_gen_toks` (the one
  generation setting every lm-eval model reads; what `--gen_kwargs max_gen_toks=N` would do);
  steps and block length are for the dLLM model to read from `paper_task_settings`;
- with a data directory (metadata `dllmq_data_dir` or `$DLLMQ_DATA_DIR`) the dataset is read from
  local files in the Hub's schema (`local_data.py`) instead of `datasets.load_dataset`; splits the
  local files lack are dropped from the config, so lm-eval falls back as it does for any task
  without them.
"""

from __future__ import annotations

import logging

from lm_eval.api.task import ConfigurableTask

from .local_data import local_dataset, resolve_data_dir
from .settings import paper_task_settings

log = logging.getLogger(__name__)

_SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


class PaperTask(ConfigurableTask):
    """lm-eval's ConfigurableTask with the paper's shots and optional local data."""

    def __init__(self, config: dict):
        config = {k: v for k, v in config.items() if k != "class"}
        settings = paper_task_settings(config["task"])
        config["num_fewshot"] = settings.num_fewshot
        if settings.output_type == "generate_until":
            config["generation_kwargs"] = {**(config.get("generation_kwargs") or {}),
                                           "max_gen_toks": settings.gen_length}
        data_dir = resolve_data_dir(config.get("metadata"))
        self._local = None
        if data_dir is not None:
            self._local = local_dataset(config["dataset_path"], config.get("dataset_name"),
                                        data_dir)
            for key in _SPLIT_KEYS:
                if config.get(key) is not None and config[key] not in self._local:
                    log.info("%s: no local %s split %r, dropped", config["task"], key, config[key])
                    config[key] = None
        super().__init__(config=config)

    def download(self, dataset_kwargs: dict | None = None, **kwargs) -> None:
        if self._local is None:
            super().download(dataset_kwargs, **kwargs)
        else:
            self.dataset = self._local
