"""The embedded task suite: the three generators under one seed, written out as JSONL.

`build_suite(seed)` returns every category's train / few-shot / test items; `write_suite(dir)`
writes `{category}_{split}.jsonl` (one JSON object per line, keys sorted) for lm-eval's task
files. Same seed, same bytes.

`shared_suite(seed)` is the suite every process of an evaluation reads, built once per machine:
building it takes seconds (most of it the code problems), which every worker process and
every notebook kernel would pay again, so it is kept in an on-disk cache, content-addressed:
the file's key is the seed, the SHA-256 of the generators' source files, the dllmq version,
the Python version and the cache format, so a change to a generator never serves the old
items. The cache is `$DLLMQ_CACHE_DIR` if set, else `$XDG_CACHE_HOME/dllmq` (default
`~/.cache/dllmq`); one JSON file per key (`suite-<seed>-<key>.json`, about 10 MB), written to a
temporary file then renamed into place, so a reader sees a whole file or none. A file that
does not decode, whose key or checksum does not match (truncated, damaged, another key's) is
rebuilt and replaced, never used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import code_problems, common, math_problems, qa
from .common import CATEGORIES, SPLITS, Item

log = logging.getLogger(__name__)

DEFAULT_SEED = 0
# Items per category a default (CPU) evaluation scores: the first N of the test split, whose
# order keeps difficulty levels interleaved so any prefix stays balanced. The binomial standard
# error they leave (`accuracy_stderr`) at accuracy 0.5 / 0.7 / 0.9: qa 3.5 / 3.2 / 2.1 points,
# math and code 5.0 / 4.6 / 3.0 points; a drop of about twice that between two cells is real.
DEFAULT_TEST_LIMIT = {"qa": 200, "math": 100, "code": 100}


@dataclass(frozen=True)
class Suite:
    seed: int
    world: qa.World
    items: dict[str, dict[str, list[Item]]]   # category -> split -> items

    def rows(self, category: str, split: str) -> list[dict]:
        if category not in self.items or split not in SPLITS:
            raise KeyError(f"unknown {category}/{split}: categories {CATEGORIES}, splits {SPLITS}")
        return [it.row for it in self.items[category][split]]


def build_suite(seed: int = DEFAULT_SEED) -> Suite:
    """All three categories for one seed (deterministic; about 5 s on one CPU core)."""
    world, qa_splits = qa.generate(seed)
    items = {"qa": qa_splits, "math": math_problems.generate(seed),
             "code": code_problems.generate(seed)}
    return Suite(seed=seed, world=world, items=items)


@functools.cache
def shared_suite(seed: int = DEFAULT_SEED) -> Suite:
    """`build_suite(seed)`, read from the on-disk cache (`cached_suite`) once per process and
    shared (read it, never change it): the embedded tasks and the embedded calibration text of
    one evaluation read the same items."""
    return cached_suite(seed)


# ---- the on-disk cache -------------------------------------------------------------------------
CACHE_FORMAT = 1
GENERATORS = (common, qa, math_problems, code_problems)  # with this file: what builds a suite


def cache_dir() -> Path:
    """`$DLLMQ_CACHE_DIR`, else `$XDG_CACHE_HOME/dllmq`, else `~/.cache/dllmq`."""
    if os.environ.get("DLLMQ_CACHE_DIR"):
        return Path(os.environ["DLLMQ_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dllmq"


def source_digest() -> str:
    """SHA-256 over the source files of the generators and of this module."""
    h = hashlib.sha256()
    for module in (*GENERATORS, sys.modules[__name__]):
        h.update(Path(module.__file__).name.encode() + b"\0" + Path(module.__file__).read_bytes())
    return h.hexdigest()


def suite_key(seed: int) -> str:
    """The cache key of a suite: everything that decides its items."""
    from .. import __version__

    text = json.dumps({"seed": seed, "sources": source_digest(), "dllmq": __version__,
                       "python": list(sys.version_info[:2]), "format": CACHE_FORMAT},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _tuples(x: Any) -> Any:
    """JSON lists back to the tuples an item key is made of."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def _suite_json(suite: Suite) -> str:
    """The suite as JSON: rows as they are (JSON values), keys and the world's entries as lists
    (`_suite_from_json` makes them tuples again; `cached_suite` checks the round trip)."""
    w = suite.world
    return json.dumps({"seed": suite.seed,
                       "world": {"people": w.people, "towns": w.towns, "countries": w.countries},
                       "items": {c: {sp: [[it.row, it.key] for it in items]
                                     for sp, items in splits.items()}
                                 for c, splits in suite.items.items()}},
                      separators=(",", ":"), ensure_ascii=False)


def _suite_from_json(text: str) -> Suite:
    d = json.loads(text)
    w = d["world"]
    world = qa.World({k: tuple(v) for k, v in w["people"].items()},
                     {k: tuple(v) for k, v in w["towns"].items()}, tuple(w["countries"]))
    items = {c: {sp: [Item(row=row, key=_tuples(key)) for row, key in rows]
                 for sp, rows in splits.items()} for c, splits in d["items"].items()}
    return Suite(seed=d["seed"], world=world, items=items)


def _read_cache(path: Path, key: str, seed: int) -> Suite | None:
    """The suite in a cache file whose header names `key` and whose checksum holds; None (with
    the reason logged) for any other file."""
    try:
        header, _, body = path.read_bytes().partition(b"\n")
        head = json.loads(header)
        if head.get("key") != key or head.get("sha256") != hashlib.sha256(body).hexdigest():
            raise ValueError("its key or checksum does not match")
        suite = _suite_from_json(body.decode("utf-8"))
        if suite.seed != seed:
            raise ValueError(f"it holds seed {suite.seed}")
        return suite
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("suite cache %s is not usable (%s: %s); building the suite again", path,
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None


def cached_suite(seed: int = DEFAULT_SEED) -> Suite:
    """`build_suite(seed)` from the on-disk cache (`cache_dir`), building and writing it when
    the cache has no valid file for its key. A cache that cannot be written is logged and the
    built suite returned."""
    key = suite_key(seed)
    try:
        path = cache_dir() / f"suite-{seed}-{key[:20]}.json"
    except RuntimeError as e:  # Path.home(): no HOME and no user entry
        log.warning("no cache folder for the suite (%s); set DLLMQ_CACHE_DIR to build it once", e)
        return build_suite(seed)
    if path.exists():
        suite = _read_cache(path, key, seed)
        if suite is not None:
            log.debug("suite %d from %s", seed, path)
            return suite
    suite = build_suite(seed)
    text = _suite_json(suite)
    if _suite_from_json(text) != suite:  # a generator made a value JSON cannot give back
        log.warning("suite %d does not survive a JSON round trip; not cached", seed)
        return suite
    body = text.encode("utf-8")
    header = json.dumps({"key": key, "sha256": hashlib.sha256(body).hexdigest(),
                         "format": CACHE_FORMAT}).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header + b"\n" + body)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("suite %d built and cached in %s", seed, path)
    except OSError as e:
        log.warning("cannot write the suite cache in %s (%s); set DLLMQ_CACHE_DIR to a writable "
                    "folder to build the suite once", path.parent, e.strerror or e)
    return suite


def write_suite(out_dir: str | Path, seed: int = DEFAULT_SEED, suite: Suite | None = None) -> list[Path]:
    """Write `{category}_{split}.jsonl` for every category and split; returns the paths."""
    suite = suite or build_suite(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for category in CATEGORIES:
        for split in SPLITS:
            path = out / f"{category}_{split}.jsonl"
            with path.open("w", encoding="utf-8", newline="\n") as f:
                for row in suite.rows(category, split):
                    f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            paths.append(path)
    log.info("wrote %d files to %s", len(paths), out)
    return paths


def accuracy_stderr(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n items: sqrt(p (1 - p) / n)."""
    if n <= 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n > 0 and 0 <= p <= 1, got p={p}, n={n}")
    return math.sqrt(p * (1.0 - p) / n)
