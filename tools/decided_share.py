"""How many F1-F8 sub-claims a preset's stored run decides, and how many it would decide with
other item counts: the evidence behind the item counts in params/ and the README.

    python tools/decided_share.py --preset full                       # as tables/full/findings.md
    python tools/decided_share.py --preset full --items 100,40,40     # the first n items per task
    python tools/decided_share.py --preset full --tile 1,4,4          # 4x the math and code items
    python tools/decided_share.py --preset full --present             # a run not finished yet

`--items QA,MATH,CODE` keeps each task's first n documents (what a smaller `limit` evaluates);
`--tile QA,MATH,CODE` repeats every item k times (k times the items with the same per-item
outcomes: the paired se shrinks by about sqrt(k) while the effects stay, an optimistic
projection, since effects measured near a threshold regress toward it). Reads the preset's
store (and the preset's `store_bundle`) and computes nothing: a missing cell is an error (run
`make reproduce PRESET=...`), or with `--present` left out: the sub-claims of the cells that
are stored are judged, and the total counts only those.
F0 (outliers) is not counted, as in findings.md.
"""

from __future__ import annotations

import argparse
import logging

from dllmq.findings import decided, judge, resize_items
from dllmq.study import category_of, findings_frame, load_params


def _per_task(text: str | None, tasks: list[str], what: str) -> dict[str, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != len(tasks) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"--{what} {text!r}: give {len(tasks)} positive integers, one per task "
                         f"({', '.join(tasks)}), e.g. --{what} {','.join(['1'] * len(tasks))}")
    return {t: int(p) for t, p in zip(tasks, parts, strict=True)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--items", help="QA,MATH,CODE: keep the first n documents of each task")
    ap.add_argument("--tile", help="QA,MATH,CODE: repeat every item k times")
    ap.add_argument("--present", action="store_true",
                    help="judge the stored cells only (missing cells are listed, not an error)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        P = load_params(args.preset)
        tasks = [spec["task"] for cat in ("qa", "math", "code") for spec in P["tasks"][cat]]
        items, tile = _per_task(args.items, tasks, "items"), _per_task(args.tile, tasks, "tile")
        df = resize_items(findings_frame(P, compute=False, missing_ok=args.present), items, tile)
    except (FileNotFoundError, ValueError) as e:  # an unknown preset, a store missing cells
        raise SystemExit(f"decided_share: {e}") from None
    cats, roles = category_of(P), dict(P["models"])
    for name, margin in (("margin 4", None), ("zero margin", 0.0)):
        found = judge(df, cats, roles) if margin is None else judge(df, cats, roles, margin=margin)
        d, t = decided(found)
        print(f"{args.preset} items={args.items or 'as stored'} tile={args.tile or 1} {name}"
              f"{' (stored cells only)' if args.present else ''}: "
              f"{d} of {t} F1-F8 sub-claims decided ({100 * d / t:.1f} %)")


if __name__ == "__main__":
    main()
