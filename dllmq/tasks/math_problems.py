"""GSM8K-style word problems with worked steps and a final `#### N` line, scored by exact match on N.

A problem is a starting amount and a chain of operations (buy, give away, multiply, buy packs,
share equally), each told as a sentence and worked as one line `a op b = c` in the answer.
Difficulty = the number of worked steps (1-4); larger difficulties also use larger numbers and,
half the time, one irrelevant sentence (GSM8K's distractors). Answers follow GSM8K's
`#### N` convention (openai/grade-school-math); unlike GSM8K the steps carry no `<<...>>`
calculator annotations, to keep answers under ~64 tokens.
"""

from __future__ import annotations

import random

from .common import Item, check_disjoint

NAMES = ("Mira", "Tom", "Ana", "Leo", "Sara", "Ben", "Nina", "Omar", "Lily", "Sam", "Ivy", "Max",
         "Rosa", "Eli", "Zoe", "Finn", "Ada", "Hugo", "Maya", "Theo")
THINGS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "cookies", "shells",
          "stamps", "cards", "eggs", "beads")
MAX_VALUE = 999
START_MAX = {1: 99, 2: 120, 3: 150, 4: 300}   # difficulty -> largest starting amount
STEP_MAX = {1: 40, 2: 40, 3: 60, 4: 90}       # difficulty -> largest added / removed amount
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _apply(kind: str, a: int, b: int) -> int:
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a // b}[kind]


def _chain(rng: random.Random, steps: int) -> tuple[int, list[tuple]]:
    """A start value and ops [(kind, args...)] using exactly `steps` worked lines, every
    intermediate value a whole number in [0, MAX_VALUE]."""
    start = x = rng.randint(2, START_MAX[steps])
    ops: list[tuple] = []
    left = steps
    while left:
        choices = ["add", "sub", "mul"] + (["pack"] if left >= 2 else []) + (["div"] if left == 1 else [])
        kind = rng.choice(choices)
        if kind == "add":
            n = rng.randint(2, STEP_MAX[steps])
            op, y = ("add", n), x + n
        elif kind == "sub":
            if x < 3:
                continue
            n = rng.randint(1, min(x - 1, STEP_MAX[steps]))
            op, y = ("sub", n), x - n
        elif kind == "mul":
            k = rng.randint(2, 5)
            op, y = ("mul", k), x * k
        elif kind == "pack":
            k, n = rng.randint(2, 6), rng.randint(2, 12)
            op, y = ("pack", k, n), x + k * n
        else:
            divisors = [k for k in range(2, 10) if x % k == 0 and x // k > 1]
            if not divisors:
                continue
            k = rng.choice(divisors)
            op, y = ("div", k), x // k
        if y > MAX_VALUE:
            continue
        ops.append(op)
        x = y
        left -= 2 if kind == "pack" else 1
    return start, ops


def _sentence(rng: random.Random, op: tuple, who: str, other: str, thing: str) -> str:
    kind = op[0]
    if kind == "add":
        return rng.choice([f"{who} buys {op[1]} more {thing}.", f"{who} finds {op[1]} more {thing}.",
                           f"{other} gives {who} {op[1]} more {thing}."])
    if kind == "sub":
        return rng.choice([f"{who} gives {op[1]} {thing} to {other}.", f"{who} loses {op[1]} {thing}.",
                           f"{who} sells {op[1]} {thing}."])
    if kind == "mul":
        named = {2: f"{who} doubles the {thing}.", 3: f"{who} triples the {thing}."}
        return named.get(op[1], f"{who} now has {op[1]} times as many {thing} as before.")
    if kind == "pack":
        return f"{who} buys {op[1]} bags with {op[2]} {thing} in each bag."
    return f"{who} splits the {thing} equally into {op[1]} boxes."


def _worked(start: int, ops: list[tuple]) -> tuple[list[str], int]:
    lines, x = [], start
    for op in ops:
        if op[0] == "pack":
            m = op[1] * op[2]
            lines += [f"{op[1]} * {op[2]} = {m}", f"{x} + {m} = {x + m}"]
            x += m
        else:
            y = _apply(op[0], x, op[1])
            lines.append(f"{x} {SYMBOL[op[0]]} {op[1]} = {y}")
            x = y
    return lines, x


def make_problem(rng: random.Random, steps: int, idx: str) -> Item:
    """One problem with `steps` worked lines; its key is (start, ops): wording-free."""
    start, ops = _chain(rng, steps)
    who, other = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    sentences = [f"{who} has {start} {thing}."]
    if steps >= 2 and rng.random() < 0.5:
        extra = rng.choice([t for t in THINGS if t != thing])
        sentences.append(f"{other} has {rng.randint(2, START_MAX[steps])} {extra}.")
    sentences += [_sentence(rng, op, who, other, thing) for op in ops]
    ends_split = ops[-1][0] == "div"
    sentences.append(f"How many {thing} are in each box?" if ends_split
                     else f"How many {thing} does {who} have now?")
    lines, target = _worked(start, ops)
    row = {"id": idx, "question": " ".join(sentences),
           "answer": "\n".join(lines) + f"\n#### {target}", "target": str(target),
           "difficulty": steps}
    return Item(row=row, key=(start, tuple(ops)))


# The first N_TEST_FIRST test problems are drawn before the train split (the shipped tiny models
# were trained on that train split); the rest of the test split is drawn after it from the same
# stream, skipping every key already used, so growing n_test never changes train or few-shot.
N_TEST_FIRST = 400


def generate(seed: int, n_train: int = 20000, n_test: int = 10000,
             n_fewshot: int = 16) -> dict[str, list[Item]]:
    """Splits with difficulties 1-4 in equal shares (test exactly balanced), keys never repeated.
    Test items N_TEST_FIRST.. are drawn after train (see N_TEST_FIRST): the test split's prefix
    and the train and few-shot splits are the same for any n_test."""
    rng = random.Random(f"math-{seed}")
    seen: set[tuple] = set()
    splits: dict[str, list[Item]] = {}
    first = min(n_test, N_TEST_FIRST)
    for name, n in (("test", first), ("fewshot", n_fewshot), ("train", n_train), ("test", n_test)):
        items: list[Item] = splits.get(name, [])
        tries = 0
        while len(items) < n:
            steps = 1 + len(items) % 4
            item = make_problem(rng, steps, f"math/{name}/{len(items)}")
            tries += 1
            if tries > 20 * (n + 100):
                raise ValueError(f"math: cannot draw {n} distinct {name} problems; lower n_train")
            if item.key in seen:
                continue
            seen.add(item.key)
            items.append(item)
        splits[name] = items
    splits = {name: splits[name] for name in ("train", "fewshot", "test")}
    check_disjoint(splits, "question")
    return splits
