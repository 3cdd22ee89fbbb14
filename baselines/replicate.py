"""Does a published result hold on instances the study never saw? ``diffenvs compare --replicate``.

Reruns chosen cells (methods x tasks) of an ``instance``-protocol study on other instances, with the
study's budgets and configuration, into a study directory of their own (``runs/replicate/<study>``
by default: resumable as any study), and sets each new cell beside the published one: the published
IQM and interval (from the study's directory, e.g. the committed ``results/full``), the new values,
their IQM, how many new values fall inside the published interval, and whether the new IQM does.

How to read it: the published interval is a 95% interval for the IQM over instances like the
published ones, not for single instances, so single new values fall outside it often where
instances differ much; a new IQM over as many instances falls inside it in most replications (an
independent estimate lands in a 95% interval of the first about 83% of the time for a normal
statistic). A new IQM outside, and new values mostly on one side, say the published cell does not
hold. Writes ``replication.md`` next to the new runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffenvs.baselines.execution import run_study
from diffenvs.baselines.report import Cell, load_runs, summarize, write_report
from diffenvs.baselines.study import StudyConfig
from diffenvs.config import ConfigError
from diffenvs.registration import task_name


@dataclasses.dataclass(frozen=True)
class Replicated:
    """One cell: the published result and the new one.

    Attributes:
        env_id: The task.
        method: The method's label.
        published: The published cell (``None`` where the study has no finished run of it).
        new: The cell on the new instances.
    """

    env_id: str
    method: str
    published: Cell | None
    new: Cell

    @property
    def values_inside(self) -> int | None:
        """New values inside the published interval (``None`` without one)."""
        if self.published is None or not self.published.has_interval:
            return None
        return sum(self.published.low <= value <= self.published.high for value in self.new.values)

    @property
    def iqm_inside(self) -> bool | None:
        """Whether the new IQM lies inside the published interval (``None`` without one)."""
        if self.published is None or not self.published.has_interval:
            return None
        return self.published.low <= self.new.iqm <= self.published.high

    def line(self) -> str:
        """One line for the terminal."""
        published = "no published result" if self.published is None else f"published {self.published.text()} (n={self.published.n})"
        new = f"new {self.new.iqm:.3f} (n={self.new.n}: {', '.join(f'{v:.3f}' for v in self.new.values)})"
        if self.iqm_inside is None:
            verdict = "no published interval to test (fewer than 5 published instances)"
        else:
            verdict = (f"{self.values_inside} of {self.new.n} new values inside; new IQM "
                       + ("inside" if self.iqm_inside else "OUTSIDE"))
        return f"{task_name(self.env_id)} {self.method}: {published}; {new}; {verdict}"


def replicate(config: StudyConfig, seeds: Iterable[int], *, methods: Iterable[str] | None = None,
              envs: Iterable[str] | None = None, out_dir: str | Path | None = None, backend: str = "pool",
              address: str | None = None, progress: bool = True) -> tuple[list[Replicated], Path]:
    """Rerun the chosen cells of ``config`` on the instances ``seeds`` and compare (see the module docstring).

    Returns:
        One :class:`Replicated` per cell with new runs, and the path of ``replication.md``.

    Raises:
        ConfigError: a ``generalize`` study, no seeds, seeds the study already has, unknown methods or envs.
    """
    seeds = tuple(dict.fromkeys(int(seed) for seed in seeds))
    if config.protocol != "instance":
        raise ConfigError("--replicate reruns single-instance cells: the study's protocol must be 'instance'")
    if not seeds:
        raise ConfigError("--replicate needs the instances (reset seeds) to rerun on")
    overlap = sorted(set(seeds) & set(config.all_seeds))
    if overlap:
        raise ConfigError(f"--replicate: instances {overlap} are already in the study; choose ones it never saw")
    methods = list(methods or config.methods)
    envs = list(envs or config.envs)
    unknown = sorted(set(methods) - set(config.methods)) + sorted(set(envs) - set(config.envs))
    if unknown:
        raise ConfigError(f"--replicate: {unknown} are not methods or envs of the study")
    out = Path(out_dir) if out_dir is not None else Path("runs") / "replicate" / Path(config.out_dir).name
    fresh_config = dataclasses.replace(
        config, name=f"Replication: {config.name}, instances {', '.join(map(str, seeds))}", envs=tuple(envs), seeds=seeds,
        env_seeds={}, methods={label: config.methods[label] for label in methods}, out_dir=str(out),
        env_kwargs={env_id: kwargs for env_id, kwargs in config.env_kwargs.items() if env_id in envs})
    published = summarize(config, load_runs(config))
    run_study(fresh_config, backend=backend, address=address, progress=progress, report=False)
    write_report(fresh_config)
    fresh = summarize(fresh_config, load_runs(fresh_config))
    cells = []
    for env_id in envs:
        before = {row["method"]: row["cell"] for row in published.get(env_id, [])}
        for row in fresh.get(env_id, []):
            cells.append(Replicated(env_id, row["method"], before.get(row["method"]), row["cell"]))
    path = out / "replication.md"
    path.write_text(_markdown(config, fresh_config, cells), encoding="utf-8")
    return cells, path


def _markdown(config: StudyConfig, fresh: StudyConfig, cells: list[Replicated]) -> str:
    lines = [f"# {fresh.name}", "",
             (f"Published: `{config.out_dir}`. Each cell rerun on instances {', '.join(map(str, fresh.seeds))} with "
              "the study's budgets and configuration. The published interval is a 95% interval for the IQM over "
              "instances (see `diffenvs.baselines.replicate`)."), "",
             "| task | method | published IQM [95% CI] (n) | new values | new IQM | new values inside | new IQM inside |",
             "|---|---|---|---|---|---|---|"]
    for c in cells:
        published = "-" if c.published is None else f"{c.published.text()} ({c.published.n})"
        inside: Any = "-" if c.values_inside is None else f"{c.values_inside} of {c.new.n}"
        iqm_inside = "-" if c.iqm_inside is None else ("yes" if c.iqm_inside else "**no**")
        lines.append(f"| {task_name(c.env_id)} | {c.method} | {published} | {', '.join(f'{v:.3f}' for v in c.new.values)} "
                     f"| {c.new.iqm:.3f} | {inside} | {iqm_inside} |")
    return "\n".join(lines) + "\n"


__all__ = ["Replicated", "replicate"]
