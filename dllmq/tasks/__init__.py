"""The embedded task suite (knowledge QA, math, code), its training corpus, tokenizer and code scorer."""

from .common import CATEGORIES, SPLITS, Item, normalise
from .suite import (
           DEFAULT_SEED,
           DEFAULT_TEST_LIMIT,
           Suite,
           accuracy_stderr,
           build_suite,
           write_suite,
)

__all__ = ["CATEGORIES", "DEFAULT_SEED", "DEFAULT_TEST_LIMIT", "SPLITS", "Item", "Suite",
           "accuracy_stderr", "build_suite", "normalise", "write_suite"]
