"""MkDocs hook: lay the package out for mkdocstrings as it is installed.

The source tree maps ``diffenvs.tasks``, ``diffenvs.baselines`` and ``diffenvs.configs`` to the
top-level ``tasks/``, ``baselines/`` and ``configs/`` folders (``pyproject.toml``'s
``package-dir``); mkdocstrings reads sources by path (and follows links to their real folders), so
this hook copies them into ``build/docs-src/diffenvs`` before the site is built.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "docs-src"


def stage() -> None:
    """Copy the package's folders into :data:`STAGE` as they install, and keep the checkout itself off
    ``sys.path``: mkdocstrings searches sys.path after its own paths, and run from the repository it
    would meet the source tree's ``diffenvs/`` (without ``tasks/`` and ``baselines/``) first."""
    sys.path[:] = [path for path in sys.path if path and Path(path).resolve() != ROOT]
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(STAGE, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, folder in sorted(mapping.items()):  # "diffenvs" first, then its mapped subpackages
        shutil.copytree(ROOT / folder, STAGE.joinpath(*name.split(".")), ignore=ignore, dirs_exist_ok=True)


stage()  # on loading the hook, before any plugin's on_config: mkdocstrings drops search paths that do not exist yet


def on_pre_build(config, **kwargs):
    stage()  # again for each rebuild of `mkdocs serve` (the sources may have changed)
