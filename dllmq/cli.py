"""`python -m dllmq <command>` (also the `dllmq` console script). The only argparse in dllmq.

    eval      evaluate one model x recipe on tasks (optionally into a results store)
    sweep     run a grid file into its results store, skipping finished cells (--executor
              local --workers N: one process per GPU; slurm: submitit job arrays)
    plan      a grid's cells, what the store holds, the estimated time per cell and in total
    lm_eval   lm-eval's own CLI with the `dllmq` model registered, dllmq's task folder as the
              default --include_path and --device cpu without CUDA:
              python -m dllmq lm_eval --model dllmq --model_args pretrained=NAME,recipe=R ...
              (lm-eval 0.4.13 has no plugin entry points: its registry only knows models whose
              module was imported, so plain `lm_eval --model dllmq` finds ours only from the
              release that reads pyproject's `lm_eval.models` entry point)
    quantize  quantize a model with a recipe and save it: weight-only recipes as dequantized
              weights in the official layout (dllmq.load), the others packed with the
              dllmq extension (dllmq.quant.load_quantized)
    train     train the shipped tiny models (dllmq.train)
    bench     run a benchmark script from bench/

Each command is a pair `_add_<name>(subparsers)` / `_run_<name>(args)`; library functions get
plain values, never the argparse namespace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("dllmq")

REPO_ROOT = Path(__file__).resolve().parent.parent


class CLIError(SystemExit):
    """Exit with one line on stderr."""

    def __init__(self, msg: str):
        super().__init__(f"dllmq: error: {msg}")


def _value(text: str):
    """`--set k=v` values: JSON scalars (true, 3, 0.5, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _settings(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        k, eq, v = p.partition("=")
        if not eq or not k:
            raise CLIError(f"--set takes name=value, got {p!r}")
        out[k] = _value(v)
    return out


# ---- checks shared by the commands (before any long work) -----------------------------------
def _writable(path: str | None, flag: str, directory: bool = False) -> Path | None:
    """The path, if a file (or directory) can be created or replaced there; else CLIError."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not directory and p.is_dir():
        raise CLIError(f"{flag} {p} is a directory; give a file path")
    if directory and p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {p} is a file; give a directory path")
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK) \
            or (p.exists() and not os.access(p, os.W_OK)):
        raise CLIError(f"{flag} {p}: cannot write there ({anc} is not a writable directory); "
                       "choose another path")
    return p


def _check_recipe(recipe: str) -> None:
    from .harness import NO_QUANT
    from .quant.api import resolve_recipe

    if recipe == NO_QUANT:
        return
    try:
        resolve_recipe(recipe)
    except (KeyError, ValueError) as e:
        raise CLIError(f"--recipe {recipe}: {e.args[0] if e.args else e}") from None


def _calibration(args) -> dict:
    """The calibration flags as an override (`harness.resolve_calibration`); unset flags absent."""
    from .data import SOURCES

    if args.calib is not None and args.calib not in SOURCES:
        raise CLIError(f"--calib {args.calib}: unknown source; choose one of {', '.join(SOURCES)}")
    for flag, v in (("--calib-samples", args.calib_samples), ("--calib-seqlen", args.calib_seqlen)):
        if v is not None and v < 1:
            raise CLIError(f"{flag} must be >= 1, got {v}")
    c = {"source": args.calib, "samples": args.calib_samples, "seqlen": args.calib_seqlen,
         "seed": args.calib_seed}
    return {k: v for k, v in c.items() if v is not None}


def _add_calibration(p) -> None:
    g = p.add_argument_group("calibration (default: the recipe's own; a shipped model's own, see "
                             "its dllmq_defaults.yaml)")
    g.add_argument("--calib", help="calibration source (wikitext2, pileval, embedded)")
    g.add_argument("--calib-samples", type=int, help="number of calibration windows")
    g.add_argument("--calib-seqlen", type=int, help="tokens per window")
    g.add_argument("--calib-seed", type=int, help="seed of the window draw (default 0)")


# ---- eval -----------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model x recipe on tasks")
    p.add_argument("--model", required=True, help="shipped name, checkpoint dir or Hub id")
    p.add_argument("--recipe", default="fp16", help="quantization recipe (fp16: none)")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--limit", type=int, help="documents per task (>= 1)")
    p.add_argument("--num-fewshot", type=int, help="shots (not for paper_* tasks: they fix theirs)")
    p.add_argument("--seed", type=int, action="append", help="repeatable; default 0")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an evaluation setting (mc_num, batch_size, gen_length, steps, ...)")
    p.add_argument("--apply-chat-template", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the tokenizer's chat template (default: as the model's "
                        "dllmq_defaults.yaml says per task, else no)")
    p.add_argument("--include-path", action="append", default=[], help="extra lm-eval task folder")
    p.add_argument("--no-default-tasks", action="store_true",
                   help="never index all of lm-eval's tasks (~20 s); by default they are indexed "
                        "only when a task is not dllmq's, a paper task's or under --include-path")
    p.add_argument("--data-dir", help="local benchmark files (else $DLLMQ_DATA_DIR, else the Hub)")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="allow code tasks to execute generated programs")
    p.add_argument("--store", help="results store (SQLite) to read finished cells from and write to")
    p.add_argument("--device")
    p.add_argument("--json", help="write the metrics to this JSON file")
    _add_calibration(p)


def _eval_tasks(args, settings: dict) -> list[dict]:
    """Each task with its settings: the model's own defaults for it (`model_defaults`), under
    what the command line gives. Paper tasks fix their shots: --num-fewshot is refused there."""
    from .harness import model_defaults
    from .tasks.lm_eval import all_paper_settings

    try:
        defaults = model_defaults(args.model)
    except ValueError as e:
        raise CLIError(str(e)) from None
    names = [t.strip() for t in args.tasks.split(",")]
    if not all(names):
        raise CLIError(f"--tasks {args.tasks!r} has an empty name; give comma-separated task names")
    paper = all_paper_settings()
    out = []
    for name in names:
        if args.num_fewshot is not None and name in paper \
                and args.num_fewshot != paper[name].num_fewshot:
            raise CLIError(f"--num-fewshot {args.num_fewshot}: {name} uses the paper's "
                           f"{paper[name].num_fewshot} shots; drop the flag, or evaluate lm-eval's "
                           f"{paper[name].lm_eval} with your shots")
        out.append({"task": name, "settings": {**defaults.tasks.get(name, {}), **settings}})
    return out


def _check_tasks(grid, tm, confirm_unsafe: bool, num_fewshot: int | None) -> None:
    """Before the model loads: the tasks exist and build, code tasks have
    --confirm-run-unsafe-code, --num-fewshot fits each task's few-shot documents."""
    from .tasks.lm_eval import check_runnable, check_task_names

    names = list(dict.fromkeys(t.name for t in grid.tasks))
    try:
        check_task_names(names, tm)
    except ValueError as e:
        raise CLIError(str(e)) from None
    for name in names:
        try:
            built = tm.load([name])["tasks"]
        except Exception as e:  # missing local file, offline Hub, broken YAML: one line each
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CLIError(f"task {name}: cannot be loaded ({type(e).__name__}: {first})") from None
        try:
            check_runnable(built, confirm_unsafe, num_fewshot)
        except ValueError as e:
            raise CLIError(str(e).replace("num_fewshot", "--num-fewshot", 1)) from None


def _run_eval(args) -> int:
    from .sweep import GridError, grid_for_eval, run_sweep, task_manager, with_overrides

    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit {args.limit}: give a positive number of documents per task")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise CLIError(f"--num-fewshot {args.num_fewshot}: give 0 or more shots")
    json_out = _writable(args.json, "--json")
    _writable(args.store, "--store")
    _check_recipe(args.recipe)
    calib = _calibration(args)
    settings = _settings(args.set)
    for key, val in (("limit", args.limit), ("num_fewshot", args.num_fewshot),
                     ("apply_chat_template", args.apply_chat_template)):
        if val is not None:
            settings[key] = val
    tasks = _eval_tasks(args, settings)
    try:
        grid = grid_for_eval([args.model], [args.recipe], tasks, args.seed or [0], {},
                             args.include_path, False, args.device, args.data_dir,
                             args.confirm_run_unsafe_code)
        grid = with_overrides(grid, calib=calib or None)
        tm = task_manager(grid)  # dllmq's and the paper's folders: 0.1 s
        if not args.no_default_tasks and any(t.name not in tm.all_tasks for t in grid.tasks):
            grid = with_overrides(grid, include_defaults=True)
            tm = task_manager(grid)  # all of lm-eval's tasks
        _check_tasks(grid, tm, args.confirm_run_unsafe_code, args.num_fewshot)
        report = run_sweep(grid, args.store, tm=tm)
    except GridError as e:
        raise CLIError(str(e)) from None
    except ValueError as e:  # a setting the model refuses (e.g. a prompt longer than max_length)
        if args.verbose:
            raise
        raise CLIError(f"{e} (cells finished before it are in the store; -v: traceback)") from None
    print(report.table())
    if json_out is not None:
        rows = [{"model": r.cell.model, "recipe": r.cell.recipe, "task": r.cell.task,
                 "seed": r.cell.seed, "settings": dict(r.cell.settings), "metrics": r.metrics}
                for r in report.done]
        json_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_out.with_name(f".{json_out.name}.part")
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
        tmp.replace(json_out)
    return 0


# ---- sweep ----------------------------------------------------------------------------------
def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid file, skipping finished cells")
    p.add_argument("grid", help="grid YAML (see dllmq/sweep.py)")
    p.add_argument("--store", help="results store; overrides the grid's `store`")
    p.add_argument("--check", action="store_true", help="validate the grid and exit")
    p.add_argument("--executor", choices=("inline", "local", "submitit-local", "slurm"),
                   default="inline", help="inline: this process; local: --workers processes "
                   "(one GPU each); submitit-local / slurm: submitit jobs (dllmq/executors.py)")
    p.add_argument("--workers", type=int, default=1, help="worker processes or Slurm array tasks")
    p.add_argument("--threads", type=int, help="CPU threads per local worker (default: the "
                   "cores shared out); equal thread counts give bit-identical CPU results")
    p.add_argument("--lease", type=float, help="seconds a claimed cell stays reserved without a "
                   "heartbeat (default 120)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--time", type=int, help="Slurm time limit per worker, minutes")
    p.add_argument("--gpus-per-worker", type=int, help="Slurm GPUs per worker")
    p.add_argument("--cpus-per-worker", type=int, help="Slurm CPUs per worker")


def _run_sweep(args) -> int:
    from .store import Store, StoreError
    from .sweep import GridError, load_grid, run_sweep, validate, with_overrides

    try:
        grid = load_grid(args.grid)
        path = args.store or grid.store
        if path is None:
            raise GridError(f"{args.grid}: no `store` in the grid and no --store given")
        if args.check:
            validate(grid)
            print(f"{args.grid}: {len(grid.cells())} cells, valid")
            return 0
        if args.workers < 1:
            raise GridError(f"--workers {args.workers}: give at least 1")
        if args.executor == "inline":
            if args.workers != 1:
                raise GridError("--workers needs --executor local, submitit-local or slurm")
            report = run_sweep(grid, path, lease_s=args.lease or 120.0)
            print(report.table())
            return 0
        from . import executors

        grid = with_overrides(grid, store=Path(path))
        # the executors validate the grid before they create the store
        before = len(Store(path).stored_ids()) if Path(path).is_file() else 0
        if args.executor == "local":
            failed = executors.run_local(grid, path, args.workers, lease_s=args.lease,
                                         threads=args.threads)
        else:
            slurm = None if args.executor == "submitit-local" else {
                "partition": args.partition, "time": args.time, "gpus": args.gpus_per_worker,
                "cpus": args.cpus_per_worker}
            failed = executors.run_submitit(grid, path, args.workers, lease_s=args.lease,
                                            slurm=slurm)
        report = run_sweep(grid, path, progress=False) if not failed else None
        if report is not None:  # cells the workers stored (or any sweep sharing the store)
            report.ran = min(len(report.done), len(Store(path).stored_ids()) - before)
            report.skipped = len(report.done) - report.ran
    except (GridError, StoreError, ValueError) as e:
        raise CLIError(str(e)) from None
    if failed:
        raise CLIError(f"{failed} of {args.workers} workers failed (see the log above); rerun the "
                       "same command: finished cells are kept, the rest are redone")
    print(report.table())
    return 0


# ---- plan -----------------------------------------------------------------------------------
def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="a grid's cells, what is stored, estimated time")
    p.add_argument("grid", help="grid YAML (see dllmq/sweep.py)")
    p.add_argument("--store", help="results store; overrides the grid's `store`")
    p.add_argument("--workers", type=int, default=1, help="workers the estimate divides over")
    p.add_argument("--no-calibrate", action="store_true",
                   help="no short calibration run for cells without a stored rate")


def _run_plan(args) -> int:
    from .plan import plan_grid, plan_table
    from .store import Store, StoreError
    from .sweep import GridError, load_grid

    try:
        grid = load_grid(args.grid)
        path = args.store or grid.store
        store = Store(path) if path is not None and Path(path).exists() else None
        plans = plan_grid(grid, store, calibrate=not args.no_calibrate)
    except (GridError, StoreError) as e:
        raise CLIError(str(e)) from None
    print(plan_table(plans, args.workers))
    return 0


# ---- bundle ---------------------------------------------------------------------------------
def _add_bundle(sub) -> None:
    p = sub.add_parser("bundle", help="export a store's cells to a small committed file, or "
                                      "import one (dllmq/bundle.py)")
    p.add_argument("action", choices=("export", "import"))
    p.add_argument("store", help="results store (SQLite)")
    p.add_argument("bundle", help="bundle file (.jsonl.xz)")
    p.add_argument("--model", help="export: only this model's cells")


def _run_bundle(args) -> int:
    from .bundle import export_cells, import_cells
    from .store import Store, StoreError

    try:
        if args.action == "export":
            if not Path(args.store).is_file():
                raise CLIError(f"store {args.store} does not exist; nothing to export")
            where = {"model": args.model} if args.model else {}
            n = export_cells(Store(args.store), args.bundle, **where)
            print(f"{n} cells of {args.store} -> {args.bundle} ({Path(args.bundle).stat().st_size:,} bytes)")
        else:
            added, present = import_cells(args.store, args.bundle)
            print(f"{args.bundle} -> {args.store}: {added} cells added, {present} already there")
    except StoreError as e:
        raise CLIError(str(e)) from None
    return 0


# ---- quantize -------------------------------------------------------------------------------
def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model and save it (weight-only recipes: "
                       "official layout; others: packed, read by dllmq.quant.load_quantized)")
    p.add_argument("--model", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--out", required=True, help="output checkpoint directory (new or empty)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--device")
    _add_calibration(p)


def _check_out_dir(path: str, force: bool) -> Path:
    """Where a checkpoint may be written: never inside the installed package (its shipped
    models), a non-empty directory only with --force."""
    out = _writable(path, "--out", directory=True)
    package = Path(__file__).resolve().parent
    if out.resolve() == package or package in out.resolve().parents:
        raise CLIError(f"--out {out} is inside the installed dllmq package ({package}); "
                       "write the checkpoint somewhere else")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CLIError(f"--out {out} is not empty; pass --force to replace it, or choose a new "
                       "directory")
    return out


def _run_quantize(args) -> int:
    """Weight-only recipes: dequantized weights under the official names (`dllmq.load` and the
    official loaders read them). Recipes that quantize activations, rotate inputs online or
    quantize attention: compressed-tensors pack-quantized + the dllmq extension
    (`dllmq.quant.load_quantized` reads it; see dllmq/quant/export.py). The checkpoint is
    written to a temporary directory next to --out and renamed into place when complete."""
    from .harness import DEFAULTS_FILE, quantize_model
    from .models import load, load_tokenizer, save_pretrained
    from .models.io import resolve
    from .quant.export import save_quantized

    out = _check_out_dir(args.out, args.force)
    _check_recipe(args.recipe)
    calib = _calibration(args)
    model = load(args.model, device=args.device)
    tok = load_tokenizer(args.model)
    summary = quantize_model(model, tok, args.recipe, calib, model_name=args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if _weights_only(model):
            _restore_linears(model)
            save_pretrained(model, tmp)
            how = "weights (dequantized, official layout; dllmq.load reads it)"
        else:
            try:
                save_quantized(model, tmp)
            except ValueError as e:
                raise CLIError(str(e)) from None
            how = "packed weights + activation quantizers (dllmq.quant.load_quantized reads it)"
        tok.save_pretrained(tmp)
        defaults = resolve(args.model) / DEFAULTS_FILE  # the model's evaluation defaults travel
        if defaults.is_file():
            shutil.copy2(defaults, tmp / DEFAULTS_FILE)
        (tmp / "dllmq_quantization.txt").write_text(f"{summary}\n")
        tmp.chmod(0o755)
        if out.exists():  # empty, or --force: replaced as a whole, no stale file survives
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"saved {args.recipe} {how} to {out}")
    return 0


def _weights_only(model) -> bool:
    """No activation quantizer, online input transform or attention quantizer anywhere."""
    from .models import get_module
    from .models.layers import ActHook
    from .quant.qlinear import QLinear

    spec = model.spec
    hooks = [get_module(block, slot) for block in model.blocks
             for slot in (spec.q_hook, spec.k_hook, spec.v_hook)]
    acts = [m for m in model.modules()
            if isinstance(m, QLinear) and (m.act_spec is not None or m.input_transform is not None)]
    return all(type(h) is ActHook for h in hooks) and not acts


def _restore_linears(model) -> None:
    """QLinear -> nn.Linear with the dequantized weight, so the official loader reads it."""
    from torch import nn

    from .quant.qlinear import QLinear

    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, QLinear):
                lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                device=child.weight.device, dtype=child.weight.dtype)
                lin.weight.data.copy_(child.weight.data)
                if child.bias is not None:
                    lin.bias.data.copy_(child.bias.data)
                setattr(mod, child_name, lin)


# ---- train, bench, lm_eval (pass-throughs) ----------------------------------------------
def _add_passthrough(sub) -> None:
    sub.add_parser("train", help="train the tiny models (arguments: python -m dllmq train -h)",
                   add_help=False)
    p = sub.add_parser("bench", help="run bench/<name>.py with the remaining arguments")
    p.add_argument("name", nargs="?", help="benchmark name (without .py); none: list them")
    sub.add_parser("lm_eval", help="lm-eval's CLI with --model dllmq available", add_help=False)


def _run_train(rest: list[str]) -> int:
    from .train import main

    return main(rest) or 0


def _run_bench(args, rest: list[str]) -> int:
    scripts = sorted(p.stem for p in (REPO_ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))
    if not args.name:
        print("benchmarks: " + (", ".join(scripts) or "none (no bench/ folder)"))
        return 0
    if args.name not in scripts:
        raise CLIError(f"no benchmark {args.name!r}; available: {', '.join(scripts) or 'none'}")
    return subprocess.call([sys.executable, str(REPO_ROOT / "bench" / f"{args.name}.py"), *rest])


def lm_eval_argv(argv: list[str]) -> list[str]:
    """lm-eval's arguments with dllmq's defaults added where the user gave none: dllmq's task
    folder as `--include_path` (paper and embedded tasks) and `--device cpu` on a machine
    without CUDA (lm-eval's default is cuda:0)."""
    import torch

    from .tasks.lm_eval import TASK_DIR

    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    extra = []
    if "--include_path" not in given:
        extra += ["--include_path", str(TASK_DIR)]
    if "--device" not in given and not torch.cuda.is_available():
        extra += ["--device", "cpu"]
    return [*argv, *extra]


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's CLI after registering `dllmq` (importing dllmq.harness does that), with
    `lm_eval_argv`'s defaults."""
    from lm_eval.__main__ import cli_evaluate

    from . import harness as _registers_dllmq  # noqa: F401

    old = sys.argv
    sys.argv = ["lm_eval", *lm_eval_argv(argv)]
    try:
        cli_evaluate()
    except ValueError as e:  # lm-eval names its Python keyword, not its flag
        if "confirm_run_unsafe_code=True" in str(e):
            raise CLIError(str(e).replace("Set confirm_run_unsafe_code=True",
                                          "Pass --confirm_run_unsafe_code")) from None
        raise
    finally:
        sys.argv = old
    return 0


# ---- main -----------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dllmq", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_eval(sub)
    _add_sweep(sub)
    _add_plan(sub)
    _add_bundle(sub)
    _add_quantize(sub)
    _add_passthrough(sub)
    return p


PASSTHROUGH = ("train", "lm_eval", "bench")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    # pass-through commands hand everything after their name to the tool they wrap
    cmd_at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    rest: list[str] = []
    if cmd_at is not None and argv[cmd_at] in PASSTHROUGH:
        keep = 2 if argv[cmd_at] == "bench" and len(argv) > cmd_at + 1 \
            and not argv[cmd_at + 1].startswith("-") else 1
        rest = argv[cmd_at + keep:]
        argv = argv[:cmd_at + keep]
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose and args.command in ("eval", "sweep", "plan"):
        logging.getLogger("lm_eval").setLevel(logging.WARNING)  # one progress bar, not per-task chatter
    from .data import DataError

    try:
        if args.command == "eval":
            return _run_eval(args)
        if args.command == "sweep":
            return _run_sweep(args)
        if args.command == "plan":
            return _run_plan(args)
        if args.command == "quantize":
            return _run_quantize(args)
        if args.command == "bundle":
            return _run_bundle(args)
    except DataError as e:  # a missing local file: one line, nothing written
        raise CLIError(str(e)) from None
    if args.command == "train":
        return _run_train(rest)
    if args.command == "bench":
        return _run_bench(args, rest)
    return run_lm_eval(rest)
