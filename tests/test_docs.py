"""The documentation site builds strictly (any warning fails), has a page for every env id, and the README's task table matches the registry."""

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


def test_the_readme_task_table_matches_the_registry():
    """Every id is in the README's table with its action and observation sizes and its episode length
    (an id of a task with stages: steps per stage)."""
    import re

    import gymnasium as gym

    rows = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            for name in re.findall(r"`(\w+-v\d+)`", cells[0]):
                rows[f"DiffEnvs/{name}"] = cells
    assert set(rows) == {info.id for info in diffenvs.ENVS}
    for info in diffenvs.ENVS:
        env = gym.make(info.id, **{k: v for k, v in info.small_kwargs.items() if k != "obs_particle_count"})
        action, observation, steps = rows[info.id][1:4]
        stages = int(info.kwargs.get("stages", 1))
        per_stage = int(steps.split()[0]) * (stages if "per stage" in steps else 1)
        assert (int(action), int(observation), per_stage) == (env.action_space.shape[0], env.observation_space.shape[0],
                                                            info.max_episode_steps), info.id
        env.close()
