"""What the three task generators share: the split names, an item with its fact key, text normalisation.

Every generated item carries a `key`: the underlying fact or problem tuple, free of surface wording
(names, phrasing). Splits are disjoint by key and by normalised text, so no test item nor a
near-duplicate of one (same problem, other names) reaches training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SPLITS = ("train", "fewshot", "test")
CATEGORIES = ("qa", "math", "code")


@dataclass(frozen=True)
class Item:
    """One task item: `row` is what the JSONL file holds (the category's schema), `key` the tuple
    of the fact/problem it asks about (used for the disjointness guarantee, never written)."""

    row: dict = field(hash=False)
    key: tuple


def normalise(text: str) -> str:
    """Lower case words and signed numbers, single spaces: two texts equal here are duplicates."""
    return " ".join(re.findall(r"-?[0-9]+|[a-z]+", text.lower()))


def check_disjoint(splits: dict[str, list[Item]], text_field: str) -> None:
    """Raise if two splits share an item key or a normalised text (a generator bug, never data)."""
    names = list(splits)
    for i, a in enumerate(names):
        keys_a = {it.key for it in splits[a]}
        texts_a = {normalise(it.row[text_field]) for it in splits[a]}
        for b in names[i + 1:]:
            shared_keys = keys_a & {it.key for it in splits[b]}
            shared_texts = texts_a & {normalise(it.row[text_field]) for it in splits[b]}
            if shared_keys or shared_texts:
                raise AssertionError(f"splits {a} and {b} share {len(shared_keys)} keys and "
                                     f"{len(shared_texts)} texts: the generator must assign keys once")
