"""Cell bundles (dllmq.bundle): a store's cells to a small file and back, checked on the way in."""

import json
import lzma

import pytest
from dllmq.bundle import export_cells, import_cells, read_cells
from dllmq.store import Cell, Store, StoreError
from dllmq.study import import_store_bundle, item_scores


def _sample(doc: int, score: float) -> dict:
    return {"doc_id": doc, "task": "dllmq_math", "filter": "strict-match", "metrics": ["exact_match"],
            "exact_match": score, "doc_hash": "ab" * 32, "prompt_hash": "cd" * 32,
            "filtered_resps": [str(doc)], "target": f"#### {doc}"}


def _store(path, n_cells: int = 3, n_items: int = 50) -> tuple[Store, list[Cell]]:
    store, cells = Store(path), []
    for i in range(n_cells):
        cell = Cell("tiny-llada-base", f"recipe-{i}", "dllmq_math", {"limit": n_items, "steps": 16},
                    seed=0, key={"checkpoint": "sha256:00", "calib": {"seed": i}})
        scores = [float((d * (i + 3)) % 5 < 2) for d in range(n_items)]
        store.put(cell, {"exact_match,strict-match": (sum(scores) / n_items, 0.05)},
                  [_sample(d, s) for d, s in enumerate(scores)], wall_s=1.5 + i, worker=f"w{i}",
                  request_s=1.0 + i)
        cells.append(cell)
    return store, cells


def test_round_trip_keeps_keys_metrics_timing_and_per_item_scores(tmp_path):
    src, cells = _store(tmp_path / "a.sqlite")
    assert export_cells(src, tmp_path / "b.jsonl.xz") == 3
    dst = Store(tmp_path / "c.sqlite")
    assert import_cells(dst, tmp_path / "b.jsonl.xz") == (3, 0)
    for cell in cells:
        a, b = src.get(cell), dst.get(cell)
        assert (b.metrics, b.n_samples, b.wall_s, b.request_s, b.created_at, b.worker) == \
               (a.metrics, a.n_samples, a.wall_s, a.request_s, a.created_at, a.worker)
        assert item_scores(dst.samples(cell), "exact_match,strict-match", cell) == \
               item_scores(src.samples(cell), "exact_match,strict-match", cell)
        assert set(dst.samples(cell)[0]) == {"doc_id", "task", "filter", "metrics", "exact_match"}
    assert import_cells(dst, tmp_path / "b.jsonl.xz") == (0, 3)  # idempotent


def test_equal_stores_give_equal_bundles(tmp_path):
    src, _ = _store(tmp_path / "a.sqlite")
    export_cells(src, tmp_path / "1.xz")
    export_cells(src, tmp_path / "2.xz")
    assert (tmp_path / "1.xz").read_bytes() == (tmp_path / "2.xz").read_bytes()


def _rewrite(path, edit) -> None:
    with lzma.open(path, "rt") as f:
        lines = f.read().splitlines()
    with lzma.open(path, "wt") as f:
        f.write("\n".join(edit(lines)) + "\n")


def _edit_key(lines):
    rec = json.loads(lines[2])
    rec["key"]["calib"]["seed"] = 99
    return [lines[0], lines[1], json.dumps(rec), *lines[3:]]


def _drop_sample(lines):
    rec = json.loads(lines[1])
    rec["samples"].pop()
    return [lines[0], json.dumps(rec), *lines[2:]]


@pytest.mark.parametrize("edit, says", [
    (lambda lines: lines[:-1], "truncated"),
    (_edit_key, "edited or damaged"),
    (_drop_sample, "samples, the record says"),
    (lambda lines: ['{"format": "other"}', *lines[1:]], "not a dllmq-cells v1 bundle"),
])
def test_a_bad_bundle_is_one_line_and_leaves_the_store_untouched(tmp_path, edit, says):
    src, cells = _store(tmp_path / "a.sqlite")
    export_cells(src, tmp_path / "b.xz")
    _rewrite(tmp_path / "b.xz", edit)
    dst, _ = _store(tmp_path / "d.sqlite", n_cells=1)
    with pytest.raises(StoreError, match=says):
        import_cells(dst, tmp_path / "b.xz")
    assert [c.cell_id for c in dst.cells()] == [cells[0].cell_id]  # nothing added
    with pytest.raises(StoreError, match=says):
        import_cells(tmp_path / "new.sqlite", tmp_path / "b.xz")
    assert not (tmp_path / "new.sqlite").exists()  # a store given by path is not even created


def test_not_xz_and_missing_files_are_refused(tmp_path):
    (tmp_path / "x.xz").write_text("hello")
    with pytest.raises(StoreError, match="damaged or not xz"):
        read_cells(tmp_path / "x.xz")
    with pytest.raises(StoreError, match="does not exist"):
        read_cells(tmp_path / "nope.xz")
    with pytest.raises(StoreError, match="no cells"):
        export_cells(Store(tmp_path / "empty.sqlite"), tmp_path / "e.xz")
    assert not (tmp_path / "e.xz").exists()


def test_a_presets_store_bundle_is_imported_once_before_the_store_is_read(tmp_path):
    src, cells = _store(tmp_path / "a.sqlite")
    export_cells(src, tmp_path / "b.jsonl.xz")
    params = {"store": str(tmp_path / "new" / "s.sqlite"), "store_bundle": str(tmp_path / "b.jsonl.xz")}
    assert import_store_bundle(params) == (3, 0)
    assert import_store_bundle(params) is None  # once per process, file and store
    other = {**params, "store": str(tmp_path / "other.sqlite")}
    assert import_store_bundle(other) == (3, 0)
    assert {c.cell_id for c in Store(params["store"]).cells()} == {c.cell_id for c in cells}
    assert import_store_bundle({**params, "store_bundle": str(tmp_path / "absent.xz")}) is None
    assert import_store_bundle({"store": params["store"]}) is None


def test_a_study_judged_from_stored_cells_only_leaves_missing_ones_out(tmp_path):
    from dllmq.study import load_params, run_study

    P = {**load_params("smoke"), "store": str(tmp_path / "s.sqlite"), "workers": 1}
    done = run_study(P, ["llada_base"], ["fp16"], categories=("qa",), progress=False)
    with pytest.raises(ValueError, match="1 of 2 cells"):
        run_study(P, ["llada_base"], ["fp16", "w4a16g128-rtn"], categories=("qa",), compute=False)
    got = run_study(P, ["llada_base"], ["fp16", "w4a16g128-rtn"], categories=("qa",),
                    compute=False, missing_ok=True)
    assert got.equals(done)


def test_a_cuda_preset_without_cuda_is_one_line_before_any_worker_and_writes_nothing(tmp_path, monkeypatch):
    import torch
    from dllmq.study import load_params, run_study

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    P = {**load_params("smoke"), "store": str(tmp_path / "s.sqlite"), "workers": 4, "device": "cuda"}
    with pytest.raises(ValueError, match=r"1 of 1 cells .* runs them on cuda, which this machine does not have"):
        run_study(P, ["llada_base"], ["fp16"], categories=("qa",), progress=False)
    assert not (tmp_path / "s.sqlite").exists()
