"""The paper's per-task evaluation settings (Appendix A, Table A1), read from `dllmq_settings.yaml`.

`paper_task_settings(task)` answers for a paper task name (`paper_gsm8k`), for the lm-eval task it
is built on (`gsm8k`) and for any lm-eval subtask of a paper group (`mmlu_anatomy`,
`minerva_math_algebra`): an lm-eval model sees the subtask names on its requests
(`Instance.task_name`), so that is the name it looks up.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

SETTINGS_FILE = Path(__file__).with_name("dllmq_settings.yaml")


class UnknownTaskError(ValueError):
    """A task name that neither the paper settings nor the task registry knows."""


@dataclass(frozen=True)
class TaskSettings:
    """One paper task: its shots and either the likelihood's Monte Carlo samples (`mc_num`) or the
    LLaDA sampler's generation length, steps and block length."""

    task: str
    lm_eval: str
    num_fewshot: int
    mc_num: int | None = None
    gen_length: int | None = None
    steps: int | None = None
    block_length: int | None = None
    members: tuple[str, ...] = ()

    def __post_init__(self):
        gen = (self.gen_length, self.steps, self.block_length)
        if self.num_fewshot < 0:
            raise ValueError(f"{self.task}: num_fewshot={self.num_fewshot} must be >= 0")
        likelihood = self.mc_num is not None and gen == (None, None, None)
        generation = self.mc_num is None and None not in gen
        if not (likelihood or generation):
            raise ValueError(f"{self.task}: give either mc_num or all of gen_length, steps, "
                             f"block_length (got mc_num={self.mc_num}, gen={gen})")
        if self.mc_num is not None and self.mc_num < 1:
            raise ValueError(f"{self.task}: mc_num={self.mc_num} must be >= 1")
        if self.gen_length is not None:
            if min(gen) < 1 or self.gen_length % self.block_length:
                raise ValueError(f"{self.task}: gen_length={self.gen_length} must be a positive "
                                 f"multiple of block_length={self.block_length}")
            if self.steps % (self.gen_length // self.block_length):
                raise ValueError(f"{self.task}: steps={self.steps} must be a multiple of the "
                                 f"number of blocks {self.gen_length // self.block_length}")

    @property
    def output_type(self) -> str:
        """`loglikelihood` (multiple choice by Monte Carlo likelihood) or `generate_until`."""
        return "loglikelihood" if self.mc_num is not None else "generate_until"

    def model_settings(self, model_type: str = "llada") -> dict[str, int | float]:
        """The dllmq model's settings this task fixes for a model of this config `model_type`
        (names as the dllmq lm-eval model's model args): {mc_num} for likelihood tasks; for
        generation tasks LLaDA's {gen_length, steps, block_length}, and for the Dream family
        the paper's Dream generation settings (`dream_generation_settings`) instead."""
        from ...models import arch_spec

        if self.mc_num is not None:
            return {"mc_num": self.mc_num}
        if arch_spec(model_type).family == "dream":
            return dream_generation_settings()
        return {"gen_length": self.gen_length, "steps": self.steps,
                "block_length": self.block_length}

    def matches(self, name: str) -> bool:
        """Whether `name` is this paper task, the lm-eval task it wraps, or one of its subtasks."""
        return name in (self.task, self.lm_eval) or any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.members)


DREAM_KEY = "dream_generation"  # the settings file's one entry that is not a task


@cache
def _raw() -> dict:
    return yaml.safe_load(SETTINGS_FILE.read_text())


def dream_generation_settings() -> dict[str, int | float]:
    """What every Dream generation request of a paper task gets (the paper: 128 new tokens,
    top-p 0.95; steps default to the new tokens): a copy of the settings file's `dream_generation`."""
    return dict(_raw()[DREAM_KEY])


@cache
def all_paper_settings() -> dict[str, TaskSettings]:
    """Every paper task's settings, keyed by paper task name, in the file's order."""
    return {name: TaskSettings(task=name, **{**entry, "members": tuple(entry.get("members", ()))})
            for name, entry in _raw().items() if name != DREAM_KEY}


def paper_task_names() -> list[str]:
    """The paper task names (`paper_arc_easy`, ..., `paper_mbpp`), as `--tasks` takes them."""
    return list(all_paper_settings())


def paper_task_settings(task: str) -> TaskSettings:
    """The settings for a paper task, its lm-eval task, or an lm-eval subtask of a paper group.

    Raises UnknownTaskError (one line, with the closest names) for any other name.
    """
    for settings in all_paper_settings().values():
        if settings.matches(task):
            return settings
    known = [n for s in all_paper_settings().values() for n in (s.task, s.lm_eval)]
    close = difflib.get_close_matches(task, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownTaskError(f"no paper settings for task {task!r}: known are "
                           f"{', '.join(paper_task_names())} and the lm-eval tasks they wrap{hint}")
