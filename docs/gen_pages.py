"""Pages generated at build time (``mkdocs-gen-files``): one per env id from its docstring, one per
committed study report, and the changelog. Nothing is simulated: the pictures are committed
(``docs/render_envs.py``)."""

from __future__ import annotations

import inspect
from pathlib import Path

import mkdocs_gen_files
from gymnasium.envs.registration import load_env_creator

import diffenvs
from diffenvs.registration import task_name

ROOT = Path(__file__).resolve().parents[1]

# One page per task: the env class's docstring (Gymnasium's env-page layout) and its picture.
for info in diffenvs.ENVS:
    if info.variant_of is not None:
        continue
    name = task_name(info.id)
    doc = inspect.cleandoc(load_env_creator(info.entry_point).__doc__ or "")
    summary, _, body = doc.partition("\n")
    variants = [other.id for other in diffenvs.ENVS if other.variant_of == info.id]
    with mkdocs_gen_files.open(f"envs/{name}.md", "w") as page:
        page.write(f"# {info.id}\n\n{summary}\n\n")
        page.write(f"![{name}: the start (top) and the target (bottom) of seed 0](../assets/envs/{name}.png)\n\n")
        bottom = "the end of an episode of Adam's best sequence" if name == "Pusher" else "the target (top view beside a front view)"
        page.write(f"*Seed 0 at the default options: top, the start; bottom, {bottom}.* Episode: {info.max_episode_steps} steps.")
        if variants:
            page.write(" Also registered: " + ", ".join(f"`{v}`" for v in variants) + ".")
        page.write("\n\n" + body.strip() + "\n")

# The committed study reports, each in its own folder beside its figures (the reports link them by name).
for report in sorted((ROOT / "results").glob("*/report.md")):
    study = report.parent.name
    with mkdocs_gen_files.open(f"results/{study}/index.md", "w") as page:
        page.write(report.read_text(encoding="utf-8").replace("] [", "] \\["))  # "[0, 1] [95% ...]" is no reference link
    for figure in sorted(report.parent.glob("*.png")):
        with mkdocs_gen_files.open(f"results/{study}/{figure.name}", "wb") as out:
            out.write(figure.read_bytes())
    for extra in sorted(report.parent.glob("*.md")):
        if extra.name != "report.md":
            with mkdocs_gen_files.open(f"results/{study}/{extra.name}", "w") as out:
                out.write(extra.read_text(encoding="utf-8"))
    mkdocs_gen_files.set_edit_path(f"results/{study}/index.md", f"../results/{study}/report.md")

with mkdocs_gen_files.open("changelog.md", "w") as page:
    page.write((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
