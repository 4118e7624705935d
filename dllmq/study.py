"""What the notebooks share: preset parameters, paths relative to the repo root, and model
roles. Kept small: anything a notebook needs that is longer than a few lines lives here or in
the module it belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = REPO_ROOT / "params"


def repo_path(p: str | Path) -> Path:
    """A path from the params files, relative to the repo root (absolute paths kept)."""
    p = Path(p)
    return p if p.is_absolute() else REPO_ROOT / p


def load_params(preset: str) -> dict[str, Any]:
    path = PARAMS_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(q.stem for q in PARAMS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no preset {preset!r} (params/{preset}.yaml); known presets: {known}")
    with open(path) as f:
        return yaml.safe_load(f)


def output_dirs(out_dir: str) -> tuple[Path, Path]:
    """(figures/, tables/) under out_dir, created."""
    root = repo_path(out_dir)
    figs, tabs = root / "figures", root / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    tabs.mkdir(parents=True, exist_ok=True)
    return figs, tabs
