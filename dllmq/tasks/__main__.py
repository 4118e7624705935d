"""`python -m dllmq.tasks write OUTDIR [--seed N]`: write the embedded suite as JSONL."""

from __future__ import annotations

import argparse
import logging

from .suite import DEFAULT_SEED, write_suite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dllmq.tasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write {qa,math,code}_{train,fewshot,test}.jsonl")
    write.add_argument("out_dir")
    write.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in write_suite(args.out_dir, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
