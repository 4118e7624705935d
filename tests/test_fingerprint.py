"""Fingerprints: checkpoint content (not path), the digest cache's invalidation, task config and
documents."""

import json
import os

from dllmq.fingerprint import _stat_key, directory_fingerprint, file_digest, task_fingerprint
from dllmq.store import Store
from lm_eval.tasks import TaskManager

from evalkit import write_tasks


class CountingCache(dict):
    def __init__(self):
        super().__init__()
        self.misses = 0

    def get_digest(self, key):
        if key not in self:
            self.misses += 1
        return self.get(key)

    def put_digest(self, key, digest):
        self[key] = digest


def test_content_not_path_and_rewrites_rehashed_even_with_mtime_restored(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text('{"x": 1}')
        (d / "model.safetensors").write_bytes(b"\0" * 1000)
        (d / "MODEL_CARD.md").write_text(f"card of {d.name}")  # docs do not change the model
    assert directory_fingerprint(a) == directory_fingerprint(b)
    cache = CountingCache()
    w = a / "model.safetensors"
    good = file_digest(w, cache)
    assert file_digest(w, cache) == good and cache.misses == 1  # second call: cached
    st = w.stat()
    with open(w, "r+b") as f:  # same size, same inode, then the old mtime put back
        f.write(b"\1")
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w.stat().st_mtime_ns == st.st_mtime_ns and w.stat().st_ino == st.st_ino
    assert file_digest(w, cache) != good  # ctime moved: hashed again
    assert directory_fingerprint(a, cache) != directory_fingerprint(b, cache)


def test_store_is_a_digest_cache(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    d = file_digest(f, store)
    assert d == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert Store(tmp_path / "r.sqlite").get_digest(_stat_key(f)) == d  # kept in the file


def test_task_fingerprint_follows_the_documents_and_the_config(tmp_path):
    tasks = write_tasks(tmp_path, n_docs=3)

    def fp():
        return task_fingerprint(TaskManager(include_path=str(tasks), include_defaults=False)
                                .load(["tiny_mc"]))

    first = fp()
    assert fp() == first  # stable across task managers
    rows = [json.loads(x) for x in (tasks / "mc.jsonl").read_text().splitlines()]
    rows[1]["choices"][0] = "9"
    (tasks / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    changed_data = fp()
    assert changed_data != first
    yaml_path = tasks / "tiny_mc.yaml"
    yaml_path.write_text(yaml_path.read_text().replace('doc_to_text: "Q:', 'doc_to_text: "Question:'))
    assert fp() not in (first, changed_data)
