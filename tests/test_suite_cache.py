"""The on-disk cache of the embedded suite: what it serves equals a fresh build, exactly; a
changed key (generator source, seed) or a damaged file is rebuilt, never used."""

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from dllmq.tasks import suite as suite_mod
from dllmq.tasks.suite import build_suite, cached_suite, suite_key


@pytest.fixture(scope="module")
def fresh():
    return build_suite(0)  # the one real build of this module (~10 s)


@pytest.fixture(scope="module")
def small(fresh):
    """The first 20 items of every split: what the tests of the cache's bookkeeping serve."""
    return dataclasses.replace(fresh, items={c: {sp: items[:20] for sp, items in splits.items()}
                                             for c, splits in fresh.items.items()})


def _counted(monkeypatch, tmp_path, suite):
    """A cache in tmp_path; `build_suite` counted (and answered with `suite`)."""
    monkeypatch.setenv("DLLMQ_CACHE_DIR", str(tmp_path / "cache"))
    builds = []

    def build(seed):
        builds.append(seed)
        return suite
    monkeypatch.setattr(suite_mod, "build_suite", build)
    return tmp_path / "cache", builds


@pytest.fixture
def cache(tmp_path, monkeypatch, small):
    return _counted(monkeypatch, tmp_path, small)


def _only_file(folder):
    (path,) = folder.iterdir()
    return path


def test_cached_suite_equals_a_fresh_build_exactly(tmp_path, monkeypatch, fresh):
    folder, builds = _counted(monkeypatch, tmp_path, fresh)
    assert cached_suite(0) is fresh and builds == [0]  # built and written
    path = _only_file(folder)
    assert path.name.startswith("suite-0-") and path.suffix == ".json"
    again = cached_suite(0)  # read back from the file
    assert builds == [0] and again is not fresh
    assert again == fresh  # world, every split's rows and keys (tuples stay tuples)
    assert all(type(a.key) is type(b.key) and a.row == b.row
               for c in fresh.items for s in fresh.items[c]
               for a, b in zip(again.items[c][s], fresh.items[c][s], strict=True))


def test_a_changed_generator_source_or_seed_changes_the_key(cache, monkeypatch, tmp_path):
    folder, builds = cache
    cached_suite(0)
    key = suite_key(0)
    assert suite_key(1) != key
    changed = tmp_path / "math_problems.py"
    changed.write_text(Path(suite_mod.math_problems.__file__).read_text() + "\n# changed\n")
    monkeypatch.setattr(suite_mod.math_problems, "__file__", str(changed))
    assert suite_key(0) != key
    cached_suite(0)
    assert builds == [0, 0] and len(list(folder.iterdir())) == 2  # the old file is not served


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "not json"])
def test_a_damaged_or_foreign_cache_file_is_rebuilt(cache, small, caplog, damage):
    folder, builds = cache
    cached_suite(0)
    path = _only_file(folder)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # still valid JSON, one item's text changed: the checksum catches it
        i = data.index(b"What")
        path.write_bytes(data[:i] + b"Whot" + data[i + 4:])
    elif damage == "foreign":  # another key's file under this name
        header, _, body = data.partition(b"\n")
        path.write_bytes(json.dumps({**json.loads(header), "key": "0" * 64}).encode()
                         + b"\n" + body)
    else:
        path.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="dllmq.tasks.suite"):
        assert cached_suite(0) is small
    assert builds == [0, 0] and "is not usable" in caplog.text
    assert path.read_bytes() == data  # replaced by a whole, valid file
    assert cached_suite(0) == small and builds == [0, 0]
    assert not [p for p in folder.iterdir() if p != path]  # no temporary file left


def test_an_unwritable_cache_is_logged_and_the_suite_still_served(tmp_path, monkeypatch, small,
                                                                  caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DLLMQ_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot exist
    monkeypatch.setattr(suite_mod, "build_suite", lambda seed: small)
    with caplog.at_level(logging.WARNING, logger="dllmq.tasks.suite"):
        assert cached_suite(0) is small
    assert "cannot write the suite cache" in caplog.text
