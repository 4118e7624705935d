"""Run a notebook's jupytext source as a plain Python script, with papermill's parameter
injection: for machines without a Jupyter kernel (e.g. a GPU box reached by batch jobs).

    python tools/run_notebook.py notebooks/01_rq1_bitwidth.py -p preset paper-check

The cell tagged `parameters` is followed by the given assignments (string values), as
papermill's injected-parameters cell; the whole source then runs in one namespace with the
working directory `notebooks/`, as `make reproduce` runs it. Figures and tables are written
exactly as under papermill; cell outputs are not kept (use `make reproduce` for the .ipynb).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

PARAMS_TAG = re.compile(r'^# %%.*tags=\[[^\]]*"parameters"')


def inject(source: str, params: dict[str, str]) -> str:
    """source with `name = "value"` lines appended to the parameters cell."""
    lines = source.splitlines()
    at = next((i for i, line in enumerate(lines) if PARAMS_TAG.match(line)), None)
    if at is None:
        raise ValueError("the notebook has no cell tagged parameters")
    end = next((j for j in range(at + 1, len(lines)) if lines[j].startswith("# %%")), len(lines))
    injected = ["# injected parameters"] + [f"{k} = {v!r}" for k, v in params.items()]
    return "\n".join(lines[:end] + injected + lines[end:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)
    path = args.notebook.resolve()
    code = compile(inject(path.read_text(), dict(args.p)), str(path), "exec")
    os.chdir(path.parent)
    sys.path.insert(0, str(path.parent))
    t0 = time.perf_counter()
    exec(code, {"__name__": "__main__", "__file__": str(path)})
    print(f"{path.name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
