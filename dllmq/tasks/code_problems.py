"""HumanEval/MBPP-style code problems: a signature + docstring, the model writes the body.

Problems come from small function families with parameterised variants ("return x plus 7",
"the sum of the 3 largest", "count the characters of s that are in 'aei'", "clamp to 4..20").
Difficulty follows the shape of the canonical body: 1 = one expression, 2 = branches,
3 = a loop. Every (family, parameters) pair belongs to exactly one split, so each test item is
a variant never seen in training. Hidden tests follow HumanEval's layout
(`def check(candidate): assert ...`, then `check(entry_point)`); their inputs are chosen so that
every off-by-one variant of the parameters fails them, and so does every body with one number
literal moved by one (`x > 34` for `x > 33`) unless that body is equivalent to the right one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import combinations

from .common import Item, check_disjoint

WORDS = ("Fizz", "Buzz", "Ping", "Pong", "Zap", "Bop", "Tick", "Tock")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Family:
    """A function family: parameters, the prompt's docstring, the canonical body, a reference
    implementation and an input sampler. `params` enumerates every variant."""

    name: str
    difficulty: int
    signature: str
    params: Callable[[], Iterator[tuple]]
    doc: Callable[..., str]
    body: Callable[..., str]
    ref: Callable[..., Callable]
    inputs: Callable[..., tuple]   # (rng, *params) -> one argument tuple

    def __post_init__(self):
        if self.difficulty not in (1, 2, 3):
            raise ValueError(f"{self.name}: difficulty must be 1 (expression), 2 (branch) or 3 (loop)")
        if not (self.signature.startswith(f"def {self.name}(") and self.signature.endswith(":")):
            raise ValueError(f"{self.name}: signature must read 'def {self.name}(...):'")


def _ints(rng: random.Random, n: int, lo: int = -20, hi: int = 60) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 10)))


def _near(rng: random.Random, xs: list[int], *edges: int) -> list[int]:
    """xs with the edge values (thresholds, bounds, one past them) mixed in, shuffled."""
    out = xs + [e + rng.choice((-1, 0, 1)) for e in edges]
    rng.shuffle(out)
    return out


def _clamp_ref(lo: int, hi: int) -> Callable:
    return lambda x: min(max(x, lo), hi)


def _fizz_ref(a: int, b: int, wa: str, wb: str) -> Callable:
    return lambda n: wa if n % a == 0 else wb if n % b == 0 else str(n)


def _product_ref(a: int) -> Callable:
    def f(n: int) -> int:
        out = 1
        for i in range(a, n + 1):
            out *= i
        return out
    return f


FAMILIES = (
    Family("add_const", 1, "def add_const(x):",
           lambda: ((k,) for k in range(1, 100)),
           lambda k: f"Return x plus {k}.",
           lambda k: f"    return x + {k}\n",
           lambda k: (lambda x: x + k),
           lambda rng, *_: (rng.randint(-50, 200),)),
    Family("affine", 1, "def affine(x):",
           lambda: ((a, b) for a in range(2, 10) for b in range(1, 31)),
           lambda a, b: f"Return {a} times x minus {b}.",
           lambda a, b: f"    return {a} * x - {b}\n",
           lambda a, b: (lambda x: a * x - b),
           lambda rng, *_: (rng.randint(-30, 60),)),
    Family("scale_list", 1, "def scale_list(xs):",
           lambda: ((k,) for k in range(2, 41)),
           lambda k: f"Return a list with every number of xs multiplied by {k}.",
           lambda k: f"    return [x * {k} for x in xs]\n",
           lambda k: (lambda xs: [x * k for x in xs]),
           lambda rng, *_: (_ints(rng, rng.randint(1, 5)),)),
    Family("sum_largest", 1, "def sum_largest(xs):",
           lambda: ((k, w) for k in range(1, 9) for w in ("largest", "smallest")),
           lambda k, w: f"Return the sum of the {k} {w} numbers in xs.",
           lambda k, w: (f"    return sum(sorted(xs)[-{k}:])\n" if w == "largest"
                         else f"    return sum(sorted(xs)[:{k}])\n"),
           lambda k, w: (lambda xs: sum(sorted(xs)[-k:] if w == "largest" else sorted(xs)[:k])),
           lambda rng, *_: (_ints(rng, rng.randint(9, 12)),)),
    Family("remainder", 1, "def remainder(x):",
           lambda: ((k,) for k in range(2, 60)),
           lambda k: f"Return the remainder of x divided by {k}.",
           lambda k: f"    return x % {k}\n",
           lambda k: (lambda x: x % k),
           lambda rng, *_: (rng.randint(0, 500),)),
    Family("count_letter", 1, "def count_letter(s):",
           lambda: ((c,) for c in LETTERS),
           lambda c: f"Return how many times the letter '{c}' appears in s.",
           lambda c: f"    return s.count('{c}')\n",
           lambda c: (lambda s: s.count(c)),
           lambda rng, *_: (_word(rng),)),
    Family("clamp", 2, "def clamp(x):",
           lambda: ((lo, hi) for lo in range(-10, 21) for hi in range(lo + 5, lo + 41, 5)),
           lambda lo, hi: f"Return x limited to the range {lo} to {hi}.",
           lambda lo, hi: (f"    if x < {lo}:\n        return {lo}\n"
                           f"    if x > {hi}:\n        return {hi}\n    return x\n"),
           _clamp_ref,
           lambda rng, lo, hi: (rng.choice([rng.randint(-30, 80), lo + rng.choice((-1, 0, 1)),
                                            hi + rng.choice((-1, 0, 1))]),)),
    Family("fizz", 2, "def fizz(n):",
           lambda: ((a, b, wa, wb) for a in range(2, 8) for b in range(2, 8) if a != b
                    for wa in WORDS[:4] for wb in WORDS[4:]),
           lambda a, b, wa, wb: (f"Return '{wa}' if n is divisible by {a}, else '{wb}' if n is "
                                 f"divisible by {b}, else n as a string."),
           lambda a, b, wa, wb: (f"    if n % {a} == 0:\n        return '{wa}'\n"
                                 f"    if n % {b} == 0:\n        return '{wb}'\n    return str(n)\n"),
           _fizz_ref,
           lambda rng, *_: (rng.randint(1, 100),)),
    Family("compare", 2, "def compare(x):",
           lambda: ((t,) for t in range(-50, 51)),
           lambda t: f"Return 'high' if x is greater than {t}, 'low' if x is less than {t}, else 'equal'.",
           lambda t: (f"    if x > {t}:\n        return 'high'\n"
                      f"    if x < {t}:\n        return 'low'\n    return 'equal'\n"),
           lambda t: (lambda x: "high" if x > t else "low" if x < t else "equal"),
           lambda rng, t: (rng.choice([rng.randint(-60, 60), t + rng.choice((-1, 0, 1))]),)),
    Family("piecewise", 2, "def piecewise(x):",
           # (a - 1) * x == b at x = t - 1 or t would make moving the threshold invisible
           lambda: ((a, t, b) for a in range(2, 7) for t in range(-5, 21) for b in range(1, 21)
                    if b not in ((a - 1) * (t - 1), (a - 1) * t)),
           lambda a, t, b: f"Return {a} times x if x is less than {t}, else x plus {b}.",
           lambda a, t, b: f"    if x < {t}:\n        return {a} * x\n    return x + {b}\n",
           lambda a, t, b: (lambda x: a * x if x < t else x + b),
           lambda rng, a, t, b: (rng.choice([rng.randint(-20, 40), t + rng.choice((-1, 0))]),)),
    Family("count_greater", 3, "def count_greater(xs):",
           lambda: ((t,) for t in range(-10, 51)),
           lambda t: f"Return how many numbers in xs are greater than {t}.",
           lambda t: (f"    count = 0\n    for x in xs:\n        if x > {t}:\n"
                      f"            count += 1\n    return count\n"),
           lambda t: (lambda xs: sum(1 for x in xs if x > t)),
           lambda rng, t: (_near(rng, _ints(rng, rng.randint(3, 8)), t, t),)),
    Family("count_chars", 3, "def count_chars(s):",
           lambda: ((c,) for n in (2, 3) for c in ("".join(p) for p in combinations("aeiourst", n))),
           lambda c: f"Return how many characters of s are in '{c}'.",
           lambda c: (f"    count = 0\n    for ch in s:\n        if ch in '{c}':\n"
                      f"            count += 1\n    return count\n"),
           lambda c: (lambda s: sum(1 for ch in s if ch in c)),
           lambda rng, *_: ("".join(rng.choice("aeiourstlnmp") for _ in range(rng.randint(5, 14))),)),
    Family("sum_greater", 3, "def sum_greater(xs):",
           lambda: ((t,) for t in range(1, 72)),   # t in {-1, 0}: adding x == 0 changes no sum
           lambda t: f"Return the sum of the numbers in xs that are greater than {t}.",
           lambda t: (f"    total = 0\n    for x in xs:\n        if x > {t}:\n"
                      f"            total += x\n    return total\n"),
           lambda t: (lambda xs: sum(x for x in xs if x > t)),
           lambda rng, t: (_near(rng, _ints(rng, rng.randint(3, 8)), t, t),)),
    Family("drop_chars", 3, "def drop_chars(s):",
           lambda: ((c,) for n in (2, 3) for c in ("".join(p) for p in combinations("aeiourst", n))),
           lambda c: f"Return s without the characters that are in '{c}'.",
           lambda c: (f"    out = ''\n    for ch in s:\n        if ch not in '{c}':\n"
                      f"            out += ch\n    return out\n"),
           lambda c: (lambda s: "".join(ch for ch in s if ch not in c)),
           lambda rng, *_: ("".join(rng.choice("aeiourstlnmp") for _ in range(rng.randint(5, 14))),)),
    Family("count_between", 3, "def count_between(xs):",
           lambda: ((lo, hi) for lo in range(-10, 31) for hi in range(lo + 3, lo + 31, 3)),
           lambda lo, hi: f"Return how many numbers in xs are between {lo} and {hi}, inclusive.",
           lambda lo, hi: (f"    count = 0\n    for x in xs:\n        if {lo} <= x <= {hi}:\n"
                           f"            count += 1\n    return count\n"),
           lambda lo, hi: (lambda xs: sum(1 for x in xs if lo <= x <= hi)),
           lambda rng, lo, hi: (_near(rng, _ints(rng, rng.randint(2, 6)), lo, lo, hi, hi),)),
    Family("replace_multiples", 3, "def replace_multiples(xs):",
           lambda: ((k, v) for k in range(2, 10) for v in range(-9, 31)),
           lambda k, v: f"Return a copy of xs with every multiple of {k} replaced by {v}.",
           lambda k, v: (f"    out = []\n    for x in xs:\n        if x % {k} == 0:\n"
                         f"            out.append({v})\n        else:\n            out.append(x)\n"
                         f"    return out\n"),
           lambda k, v: (lambda xs: [v if x % k == 0 else x for x in xs]),
           lambda rng, *_: (_ints(rng, rng.randint(3, 7), 1, 40),)),
    Family("sum_multiples", 3, "def sum_multiples(n):",
           lambda: ((k,) for k in range(2, 30)),
           lambda k: f"Return the sum of all multiples of {k} below n.",
           lambda k: (f"    total = 0\n    for i in range(n):\n        if i % {k} == 0:\n"
                      f"            total += i\n    return total\n"),
           lambda k: (lambda n: sum(i for i in range(n) if i % k == 0)),
           lambda rng, *_: (rng.randint(0, 120),)),
    Family("product_from", 3, "def product_from(n):",
           lambda: ((a,) for a in range(3, 12)),   # a = 1 and a = 2 give the same products
           lambda a: f"Return the product of the whole numbers from {a} to n.",
           lambda a: f"    out = 1\n    for i in range({a}, n + 1):\n        out *= i\n    return out\n",
           _product_ref,
           lambda rng, *_: (rng.randint(0, 14),)),
)


def _mutants(params: tuple) -> list[tuple]:
    """Off-by-one variants: each int parameter +-1, each letter parameter moved one letter on."""
    out = []
    for i, p in enumerate(params):
        if isinstance(p, int):
            out += [params[:i] + (p + d,) + params[i + 1:] for d in (-1, 1)]
        elif isinstance(p, str) and len(p) == 1 and p in LETTERS:
            out.append(params[:i] + (LETTERS[(LETTERS.index(p) + 1) % 26],) + params[i + 1:])
    return out


_FAILED = object()   # what a mutant "returns" when it raises


def _safe(f: Callable, args: tuple):
    try:
        return f(*args)
    except (ArithmeticError, TypeError, ValueError, IndexError):
        return _FAILED


def _body_mutants(fam: Family, params: tuple) -> list[Callable]:
    """The canonical body with one number literal moved by one (`x > 34` for `x > 33`): the
    off-by-one slips a model makes. Compiled here from our own generated source."""
    body = fam.body(*params)
    out = []
    for m in re.finditer(r"(?<![\w.'])\d+", body):
        for d in (-1, 1):
            namespace: dict = {}
            exec(f"{fam.signature}\n{body[:m.start()]}{int(m.group()) + d}{body[m.end():]}",
                 namespace)
            out.append(namespace[fam.name])
    return out


def _test_inputs(rng: random.Random, fam: Family, params: tuple, n: int = 5,
                 pool_size: int = 64, max_cases: int = 8) -> list[tuple]:
    """Hidden-test inputs: at least n, chosen (greedy cover over a drawn pool) so every
    parameter off-by-one variant fails, and every one-literal body mutant that the pool can tell
    apart fails too (some, like `if x < lo + 1: return lo` in clamp, are equivalent)."""
    ref = fam.ref(*params)
    required = [fam.ref(*m) for m in _mutants(params)]
    optional = _body_mutants(fam, params)
    for _ in range(20):
        pool = [fam.inputs(rng, *params) for _ in range(pool_size)]
        outs = [ref(*c) for c in pool]
        kills = [{i for i, (c, o) in enumerate(zip(pool, outs, strict=True)) if _safe(m, c) != o}
                 for m in required + optional]
        if not all(kills[: len(required)]):
            continue
        todo = [k for k in kills if k]
        chosen: list[int] = []
        while todo:
            best = max(range(pool_size), key=lambda i: (sum(i in k for k in todo), -i))
            chosen.append(best)
            todo = [k for k in todo if best not in k]
        rest = [i for i in range(pool_size) if i not in chosen]
        chosen += rng.sample(rest, max(0, n - len(chosen)))
        if len(chosen) > max_cases:
            raise AssertionError(f"{fam.name}{params}: needs {len(chosen)} test cases; "
                                 "give its input sampler more edge values")
        rng.shuffle(chosen)
        return [pool[i] for i in chosen]
    raise AssertionError(f"{fam.name}{params}: no inputs tell it from its mutants; widen inputs")


def make_problem(rng: random.Random, fam: Family, params: tuple, idx: str) -> Item:
    prompt = f'{fam.signature}\n    """{fam.doc(*params)}"""\n'
    ref = fam.ref(*params)
    cases = _test_inputs(rng, fam, params)
    asserts = "".join(f"    assert candidate({', '.join(map(repr, c))}) == {ref(*c)!r}\n"
                      for c in cases)
    row = {"id": idx, "prompt": prompt, "entry_point": fam.name,
           "test": "def check(candidate):\n" + asserts, "canonical_solution": fam.body(*params),
           "difficulty": fam.difficulty}
    return Item(row=row, key=(fam.name, params))


def generate(seed: int, n_test: int = 600, n_fewshot: int = 12,
             max_train_per_family: int = 300) -> dict[str, list[Item]]:
    """Every variant of every family goes to at most one split. Test and few-shot are balanced
    across difficulties (levels interleaved, round robin over each level's families); train takes
    up to max_train_per_family of each family's remaining variants (the rest are unused)."""
    rng = random.Random(f"code-{seed}")
    pools = {}
    for fam in FAMILIES:
        variants = list(fam.params())
        rng.shuffle(variants)
        pools[fam.name] = (fam, variants)
    picked: dict[str, list[tuple[Family, tuple]]] = {"test": [], "fewshot": []}
    for name, n in (("test", n_test), ("fewshot", n_fewshot)):
        turn = {level: 0 for level in (1, 2, 3)}
        for i in range(n):   # levels cycle 1, 2, 3 so any prefix (a --limit) stays balanced
            level = 1 + i % 3
            fams = [f for f in FAMILIES if f.difficulty == level
                    and len(pools[f.name][1]) > len(list(f.params())) // 2]
            if not fams:
                raise ValueError(f"code: level {level} has too few variants for n_{name}={n}")
            fam, variants = pools[fams[turn[level] % len(fams)].name]
            turn[level] += 1
            picked[name].append((fam, variants.pop()))
    # train: the remaining variants, at most max_train_per_family each so no family dominates
    train = [(fam, v) for fam, variants in pools.values() for v in variants[:max_train_per_family]]
    rng.shuffle(train)
    order = {"train": train, "fewshot": picked["fewshot"], "test": picked["test"]}
    splits = {name: [make_problem(rng, fam, params, f"code/{name}/{i}")
                     for i, (fam, params) in enumerate(pairs)]
              for name, pairs in order.items()}
    check_disjoint(splits, "prompt")
    return splits
