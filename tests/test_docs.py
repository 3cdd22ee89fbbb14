"""The documentation site builds strictly (any warning fails) and has a page for every env id."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import diffenvs
from diffenvs.registration import task_name

ROOT = Path(__file__).resolve().parents[1]


def test_every_env_id_has_a_page_and_a_picture():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    envs = next(item["Environments"] for item in nav["nav"] if isinstance(item, dict) and "Environments" in item)
    pages = {next(iter(item.values())) for item in envs if isinstance(item, dict)}
    for info in diffenvs.ENVS:
        if info.variant_of is None:
            assert f"envs/{task_name(info.id)}.md" in pages, info.id
            assert (ROOT / "docs" / "assets" / "envs" / f"{task_name(info.id)}.png").stat().st_size > 0, info.id


def test_the_site_builds_strictly(tmp_path):
    shutil.rmtree(ROOT / "build" / "docs-src", ignore_errors=True)  # as in a fresh clone (the hook stages it)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for page in ("index.html", "envs/Assembly/index.html", "results/full/index.html", "api/index.html", "changelog/index.html"):
        assert (tmp_path / "site" / page).stat().st_size > 0, page
