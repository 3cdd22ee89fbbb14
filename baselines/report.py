"""The report of a study (``diffenvs compare``, ``--report-only``): tables, intervals, curves.

Written from the finished runs alone (read through :mod:`diffenvs.baselines.rundir`), so a restart
or ``--report-only`` writes the same report: ``report.md`` (a table per task and, with several
tasks, the methods across tasks; with ids of one family at several numbers of stages, the metric
against the number of stages and ``stages.png``), ``final.csv`` (one row per run), ``steps.png`` and ``time.png``
(metric against env steps and wall time: median and interquartile range over seeds, one panel per
task). Intervals are 95% percentile-bootstrap intervals of the interquartile mean over a cell's
runs (seeded).

Across tasks (rliable's aggregate, Agarwal et al., NeurIPS 2021): every task's metric runs from 0
(the start state) to 1 (solved), so a method's values on all tasks pool into one interquartile
mean, and its interval comes from a *stratified* bootstrap (each task's instances resampled within
the task): with three instances per task and eight tasks, 24 values, where one task's three alone
would give no honest interval. The probability of improvement ``P(X > Y)`` is rliable's: the mean
over tasks of the chance that a run of X ends above a run of Y on that task (ties count a half),
with a stratified bootstrap interval; 0.5 is a draw, and an interval that excludes 0.5 says which
method is ahead more often, not by how much.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from diffenvs.baselines.rundir import read_run
from diffenvs.baselines.study import StudyConfig, jobs, write_config
from diffenvs.registration import stages_axis, task_name

logger = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.9)
"""Fractions of the best result whose cost the report gives (env steps and seconds to reach them)."""
MIN_FOR_INTERVAL = 5
"""Fewest values (instances; training seeds under ``generalize``) that get a bootstrap interval.

With fewer, a percentile bootstrap can only recombine a handful of values: its interval is far
narrower than the spread on other instances (three instances gave SHAC [0.895, 0.923] on the Pusher;
instances 7-9 gave 0.68-0.86). rliable's guidance for very few runs is to show the runs themselves,
and so does the report below five."""


@dataclasses.dataclass
class RunRecord:
    """A finished run as the report reads it."""

    env_id: str
    method: str
    seed: int
    metric: float
    env_steps: int
    wall_time: float
    curve: np.ndarray  # (points, 3): env steps, wall time, best metric so far; starts at (0, 0, 0)
    train_seed: int | None = None


def load_runs(config: StudyConfig) -> list[RunRecord]:
    """The study's finished runs (only those of its jobs), read through :func:`~diffenvs.baselines.rundir.read_run`.

    A run counts by its result: the best sequence or best evaluated policy (``summary["metric"]``,
    the curve's ``best_metric``) under the ``instance`` protocol; the final policy on the held-out
    instances (``final_metric``, the curve's ``metric``) under ``generalize``.
    """
    final = config.protocol == "generalize"
    records = []
    for job in jobs(config):
        run_dir = Path(config.out_dir) / "runs" / job.name
        if not (run_dir / "job.json").exists():
            continue
        run = read_run(run_dir)
        curve = run.curve[:, [0, 1, 2 if final else 3]]
        curve = np.concatenate([[[0.0, 0.0, 0.0]], curve])  # nothing spent yet: the start state, metric 0
        metric = run.summary["final_metric"] if final else run.summary["metric"]
        records.append(RunRecord(env_id=job.env_id, method=job.label, seed=job.seed, metric=float(metric),
                                 env_steps=int(run.summary["env_steps"]), wall_time=float(run.summary["wall_time"]),
                                 curve=curve, train_seed=job.train_seed))
    return records


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The interquartile mean (the mean of the middle 50%: rliable's ``aggregate_iqm``)."""
    from scipy.stats import trim_mean

    return trim_mean(values, proportiontocut=0.25, axis=axis)


def interval(values: Iterable[float], *, reps: int, seed: int = 0) -> tuple[float, float, float]:
    """Interquartile mean of ``values`` and its 95% percentile-bootstrap interval
    (``scipy.stats.bootstrap``, resampling runs with replacement as rliable's stratified bootstrap does
    for one task), seeded: the same values give the same interval."""
    from scipy.stats import bootstrap

    scores = np.asarray(list(values), dtype=np.float64)
    if len(scores) == 1 or np.all(scores == scores[0]):  # no spread to resample
        return float(scores[0]), float(scores[0]), float(scores[0])
    import inspect

    generator = {"rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state": np.random.default_rng(seed)}
    result = bootstrap((scores,), iqm, n_resamples=reps, confidence_level=0.95, method="percentile", vectorized=True,
                       **generator)  # scipy >= 1.15 names the generator rng
    return float(iqm(scores)), float(result.confidence_interval.low), float(result.confidence_interval.high)


def first_reaching(curve: np.ndarray, target: float) -> tuple[float, float]:
    """Env steps and seconds at which a run's best metric first reached ``target`` (inf if never)."""
    hits = np.nonzero(curve[:, 2] >= target)[0] if len(curve) else []
    if len(hits) == 0:
        return math.inf, math.inf
    return float(curve[hits[0], 0]), float(curve[hits[0], 1])


@dataclasses.dataclass(frozen=True)
class Cell:
    """The final metric of one method on one task: its values and what the report says of them.

    Attributes:
        values: One value per unit (an instance's mean over its training seeds; under
            ``generalize`` one per training seed), in the units' order.
        iqm: Their interquartile mean.
        low: Lower end of the 95% bootstrap interval (``nan`` below :data:`MIN_FOR_INTERVAL` values).
        high: Upper end.
        seed_spread: Mean over instances of the range across training seeds (``nan`` without them).
    """

    values: tuple[float, ...]
    iqm: float
    low: float
    high: float
    seed_spread: float = math.nan

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    def text(self, digits: int = 3) -> str:
        """``IQM [low, high]``, or below five values ``IQM (runs: a, b, c)``."""
        if self.has_interval:
            return f"{self.iqm:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return f"{self.iqm:.{digits}f} (runs: {', '.join(f'{v:.{digits}f}' for v in self.values)})"


def cell(values_by_unit: dict[Any, list[float]], *, reps: int) -> Cell:
    """The :class:`Cell` of values grouped by unit (instance -> the values of its training seeds):
    the bootstrap resamples units, never the training seeds of one instance apart from it."""
    units = [float(np.mean(values)) for values in values_by_unit.values()]
    spreads = [max(values) - min(values) for values in values_by_unit.values() if len(values) > 1]
    seed_spread = float(np.mean(spreads)) if spreads else math.nan
    if len(units) < MIN_FOR_INTERVAL:
        return Cell(tuple(units), float(iqm(np.asarray(units))), math.nan, math.nan, seed_spread)
    middle, low, high = interval(units, reps=reps)
    return Cell(tuple(units), middle, low, high, seed_spread)


def summarize(config: StudyConfig, records: list[RunRecord]) -> dict[str, list[dict[str, Any]]]:
    """Per env: one row per method with the final metric's :class:`Cell` (IQM, interval, n) and the
    cost of 50% / 90% of the best method's IQM."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for env_id in config.envs:
        by_method = {label: sorted((r for r in records if r.env_id == env_id and r.method == label),
                                   key=lambda r: (r.seed, -1 if r.train_seed is None else r.train_seed))
                     for label in config.methods}
        rows = []
        for label, runs in by_method.items():
            if not runs:
                continue
            grouped: dict[int, list[float]] = {}
            for r in runs:
                grouped.setdefault(r.seed, []).append(r.metric)
            result = cell(grouped, reps=config.bootstrap_reps)
            rows.append({"method": label, "runs": len(runs), "cell": result, "iqm": result.iqm, "ci_low": result.low,
                         "ci_high": result.high, "median": float(np.median([r.metric for r in runs])),
                         "env_steps": float(np.median([r.env_steps for r in runs])),
                         "wall_time": float(np.median([r.wall_time for r in runs]))})
        if rows:
            best = max(row["iqm"] for row in rows)
            for row in rows:
                runs = by_method[row["method"]]
                for fraction in THRESHOLDS:
                    reached = [first_reaching(r.curve, fraction * best) for r in runs] if best > 0 else []
                    steps = [s for s, _ in reached]
                    seconds = [t for _, t in reached]
                    row[f"steps_{round(fraction * 100)}"] = float(np.median(steps)) if reached else math.inf
                    row[f"seconds_{round(fraction * 100)}"] = float(np.median(seconds)) if reached else math.inf
                    row[f"reached_{round(fraction * 100)}"] = sum(math.isfinite(s) for s in steps)
            tables[env_id] = rows
    return tables


def across_tasks(tables: dict[str, list[dict[str, Any]]], *, reps: int, seed: int = 0) -> dict[str, Any]:
    """The methods on every task of ``tables`` (:func:`summarize`'s) pooled across tasks.

    Returns:
        ``methods`` (those with values on every task, best aggregate first), ``aggregate`` (method ->
        (IQM over all their instance values, low, high, n)), ``improvement`` ((X, Y) -> (P(X > Y),
        low, high)) and ``missing`` (methods absent from some task). Intervals: 95% percentile
        intervals of a stratified bootstrap (``reps`` resamples, seeded).
    """
    values: dict[str, list[np.ndarray]] = {}
    labels = list(dict.fromkeys(row["method"] for rows in tables.values() for row in rows))
    for label in labels:
        per_task = [np.asarray(row["cell"].values) for rows in tables.values() for row in rows if row["method"] == label]
        if len(per_task) == len(tables):
            values[label] = per_task
    rng = np.random.default_rng(seed)

    def resample(per_task: list[np.ndarray]) -> list[np.ndarray]:  # (reps, n_t) per task
        return [v[rng.integers(0, len(v), size=(reps, len(v)))] for v in per_task]

    aggregate = {}
    for label, per_task in values.items():
        pooled = np.concatenate(resample(per_task), axis=1)
        low, high = np.percentile(iqm(pooled, axis=1), [2.5, 97.5])
        aggregate[label] = (float(iqm(np.concatenate(per_task))), float(low), float(high), sum(map(len, per_task)))

    def improvement(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:  # values (n,) or resamples (reps, n)
        chances = [((x[..., :, None] > y[..., None, :]) + 0.5 * (x[..., :, None] == y[..., None, :])).mean(axis=(-2, -1))
                   for x, y in zip(xs, ys)]
        return np.mean(chances, axis=0)

    improve = {}
    methods = sorted(values, key=lambda label: -aggregate[label][0])
    for i, x in enumerate(methods):
        for y in methods[i + 1:]:  # ties count one half, so P(Y > X) = 1 - P(X > Y) on the same resamples
            point = float(improvement(values[x], values[y]))
            low, high = np.percentile(improvement(resample(values[x]), resample(values[y])), [2.5, 97.5])
            improve[(x, y)] = (point, float(low), float(high))
            improve[(y, x)] = (1.0 - point, 1.0 - float(high), 1.0 - float(low))
    return {"methods": methods, "aggregate": aggregate, "improvement": improve,
            "missing": [label for label in labels if label not in values]}


def _overview_lines(tables: dict[str, list[dict[str, Any]]], config: StudyConfig) -> list[str]:
    """Every cell at a glance: a method per row (the config's order), a task per column, its IQM with
    the interval (or its runs below :data:`MIN_FOR_INTERVAL`) and n, flagged where instances are missing."""
    lines = ["## Overview", "",
             ("Final metric per cell, IQM [95% CI] over instances and n (below "
              f"{MIN_FOR_INTERVAL} instances the runs themselves; `n of m`: m chosen up front, the rest not yet run or "
              "not run). The sections below give each task's costs."), "",
             "| method | " + " | ".join(task_name(env_id) for env_id in tables) + " |", "|---" * (len(tables) + 1) + "|"]
    for label in config.methods:
        entries = []
        for env_id, rows in tables.items():
            row = next((row for row in rows if row["method"] == label), None)
            if row is None:
                entries.append("" if not config.runs_on(label, env_id) else "not yet")
                continue
            result: Cell = row["cell"]
            expected = len(config.instances(env_id))
            count = f"n = {result.n}" if result.n >= expected else f"n = {result.n} of {expected}"
            entries.append(f"{result.text(2)}, {count}")
        if any(entries):
            lines.append(f"| {label} | " + " | ".join(entries) + " |")
    return [*lines, ""]


def _across_lines(tables: dict[str, list[dict[str, Any]]], config: StudyConfig) -> list[str]:
    pooled = across_tasks(tables, reps=config.bootstrap_reps)
    methods = pooled["methods"]
    if not methods:
        return []
    lines = ["## Across tasks", "",
             (f"The methods with runs on all {len(tables)} tasks ({', '.join(task_name(env) for env in tables)}"
              + (f"; no runs yet on the study's other {len(config.envs) - len(tables)}" if len(tables) < len(config.envs) else "")
              + "): "
              "interquartile mean of all their instance values with a 95% stratified-bootstrap interval "
              "(instances resampled within each task), and the probability that the row's method ends above "
              "the column's on a task (rliable's probability of improvement: the mean over tasks of the chance "
              "that a run of one ends above a run of the other; 0.5 a draw) with its stratified-bootstrap "
              "interval (of zero width when, on every task, all of one method's runs end above or all below the "
              "other's: resampling within tasks cannot change that). Every metric runs from 0 (start state) to 1 "
              "(solved), so the tasks pool without rescaling."
              + _missing_text(pooled["missing"], tables, config)), "",
             "| method | n | IQM across tasks [95% CI] |", "|---|---|---|"]
    for label in methods:
        middle, low, high, n = pooled["aggregate"][label]
        lines.append(f"| {label} | {n} | {middle:.3f} [{low:.3f}, {high:.3f}] |")
    if len(methods) > 1:
        lines += ["", "| P(row > column) | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for x in methods:
            entries = ["-" if x == y else "{:.2f} [{:.2f}, {:.2f}]".format(*pooled["improvement"][(x, y)]) for y in methods]
            lines.append(f"| {x} | " + " | ".join(entries) + " |")
    return [*lines, ""]


def _missing_text(missing: list[str], tables: dict[str, Any], config: StudyConfig) -> str:
    """The methods left out of the pooled rows: not run on some task by the config, or not yet."""
    chosen = [label for label in missing if not all(config.runs_on(label, env_id) for env_id in tables)]
    pending = [label for label in missing if label not in chosen]
    return ((f" Not run on every task (the config's `envs` of each): {', '.join(chosen)}." if chosen else "")
            + (f" Not on every task yet: {', '.join(pending)}." if pending else ""))


def stage_families(config: StudyConfig) -> dict[str, dict[int, str]]:
    """The study's families on the stages axis: family -> number of stages -> env id, for every
    family with at least two numbers of stages among the study's envs (see :func:`stages_axis`)."""
    families: dict[str, dict[int, str]] = {}
    for env_id in config.envs:
        place = stages_axis(env_id, config.env_kwargs.get(env_id))
        if place is not None:
            families.setdefault(place[0], {})[place[1]] = env_id
    return {family: dict(sorted(ids.items())) for family, ids in families.items() if len(ids) > 1}


def _stage_lines(tables: dict[str, list[dict[str, Any]]], config: StudyConfig,
                 families: dict[str, dict[int, str]], plot: Path | None) -> list[str]:
    """The metric against the number of stages: a table per family (the cells of the per-task tables)."""
    lines = ["## By number of stages", "",
             ("The same cells as above, by the number of pieces the tools handle in turn; each method's budget "
              "on an id is its budget per stage times the id's `budget_scale` (given per cell). An empty cell: "
              "no finished run. Where a family has two or more ids of several stages, the last column pools "
              "them: the IQM of all their instance values with a 95% stratified-bootstrap interval (instances "
              "resampled within each id, as across tasks), for the methods with runs on every one of them "
              "(`n of m`: m instances chosen up front, the rest not yet run)."), ""]
    for family, ids in families.items():
        several = {env_id: tables[env_id] for k, env_id in ids.items() if k > 1 and env_id in tables}
        pooled = (across_tasks(several, reps=config.bootstrap_reps)["aggregate"]
                  if len(several) > 1 and len(several) == sum(k > 1 for k in ids) else {})
        header = [f"{k} stage{'s' * (k > 1)}" for k in ids]
        if pooled:
            header.append(f"{min(k for k in ids if k > 1)}-{max(ids)} stages pooled")
        lines += [f"**{family}**", "", "| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for label, spec in config.methods.items():
            entries = []
            for env_id in ids.values():
                row = next((row for row in tables.get(env_id, []) if row["method"] == label), None)
                if not config.runs_on(label, env_id):
                    entries.append("not run")
                elif row is None:
                    entries.append("")
                else:
                    budget = round(spec.budget * config.budget_scale.get(env_id, 1))
                    entries.append(f"{row['cell'].text()}, budget {budget:,}")
            if pooled:
                middle, low, high, n = pooled.get(label, (None, 0, 0, 0))
                expected = sum(len(config.instances(env_id)) for env_id in several)
                count = f"n = {n}" if n >= expected else f"n = {n} of {expected}"
                entries.append("" if middle is None else f"{middle:.3f} [{low:.3f}, {high:.3f}], {count}")
            lines.append(f"| {label} | " + " | ".join(entries) + " |")
        lines.append("")
    if plot:
        lines += [f"![metric against the number of stages]({plot.name})", ""]
    return lines


def _plot_stages(config: StudyConfig, records: list[RunRecord], families: dict[str, dict[int, str]], path: Path) -> Path | None:
    """One panel per family: each method's IQM against the number of stages, its runs as points."""
    panels = _panels(len(families))
    if panels is None:
        return None
    fig, axes, colors = panels
    for ax, (family, ids) in zip(axes[0], families.items()):
        for index, label in enumerate(config.methods):
            xs, middles = [], []
            for k, env_id in ids.items():
                values = [r.metric for r in records if r.env_id == env_id and r.method == label]
                if not values:
                    continue
                offset = (index - (len(config.methods) - 1) / 2) * 0.04  # methods side by side
                ax.plot([k + offset] * len(values), values, ".", color=colors(index % 10), alpha=0.6)
                xs.append(k + offset)
                middles.append(float(iqm(np.asarray(values))))
            if xs:
                style = "-" if config.methods[label].kind == "optimize" else "--"
                ax.plot(xs, middles, style, marker="o", color=colors(index % 10), label=label)
        ax.set_title(family)
        ax.set_xticks(list(ids))
        ax.set_xlabel("stages (pieces in turn)")
        ax.set_ylabel("final metric (runs; line: IQM)")
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))  # from 0: a method's height reads as its share of the task
    return _finish(fig, axes, config, path)


def write_report(config: StudyConfig) -> Path:
    """Write ``report.md``, ``final.csv``, ``steps.png`` and ``time.png`` from the finished runs, and
    ``study.yaml`` (the config of this report: a study run with a subset of the config's methods or
    seeds into the same directory rewrites it; the full config's report restores it)."""
    out = Path(config.out_dir)
    write_config(config)
    records = load_runs(config)
    tables = summarize(config, records)
    with open(out / "final.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        trained = ["train_seed"] if config.train_seeds else []
        writer.writerow(["env_id", "method", "seed", *trained, "metric", "env_steps", "wall_time"])
        writer.writerows([r.env_id, r.method, r.seed, *([r.train_seed] if trained else []), repr(r.metric), r.env_steps,
                          f"{r.wall_time:.3f}"] for r in records)
    plots = [_plot_curves(config, records, column, out / f"{column_name}.png")
             for column, column_name in ((0, "steps"), (1, "time"))]
    total = len(jobs(config))
    seeds = ", ".join(map(str, config.seeds))
    if config.protocol == "instance":
        per_env = "; ".join(f"{task_name(env_id)}: {_seed_list(config.instances(env_id))}" for env_id in config.envs)
        trained = (f", each with the training seeds {', '.join(map(str, config.train_seeds))} (an instance's value is "
                   "their mean; `seed spread`: the mean range across them)" if config.train_seeds else "")
        protocol = (f"Protocol: one instance per run (instances, chosen up front: {per_env}){trained}; the task's metric "
                    "in the reported setting (0 at the start state, 1 solved); optimizers by their best sequence, "
                    "learners (RL, APG, SHAC) by their best evaluated policy's deterministic episode.")
        unit = "instances"
    else:
        protocol = (f"Protocol: generalization. Policies train on random instances (training seeds {seeds}) and are "
                    f"judged by their final policy's mean metric on the held-out instances "
                    f"{', '.join(map(str, config.test_seeds))}; optimizers solve each held-out instance with "
                    f"1/{len(config.test_seeds)} of the budget (the same total), judged by the mean of their best "
                    "sequences. Metric: the task's metric in the reported setting (0 at the start state, 1 solved).")
        unit = "training seeds"
    lines = [f"# {config.name}", "", f"{len(records)} of {total} runs finished. {protocol}", "",
             (f"Final metric: interquartile mean over {unit} (n: how many) with its 95% percentile-bootstrap "
              f"interval ({unit} resampled with replacement, {config.bootstrap_reps} resamples, scipy) from "
              f"{MIN_FOR_INTERVAL} {unit} on; with fewer, the values themselves (a bootstrap over two to four "
              "values is far narrower than the spread on other instances). Cost to reach 50% / 90% of the best "
              f"method's IQM: median over runs of the env steps (forward, backward and replays; RL: training "
              "steps) and seconds of the first evaluation at or above it (`-`: fewer than half reached it; "
              "reached: how many did)."), ""]
    if config.protocol == "instance" and len(tables) > 1:
        lines += _overview_lines(tables, config)
    spread = bool(config.train_seeds)
    for env_id, rows in tables.items():
        spec = {label: config.methods[label] for label in (row["method"] for row in rows)}
        expected = len(config.instances(env_id)) if config.protocol == "instance" else len(config.seeds)
        lines += [f"## {env_id}", "",
                  ("| method | budget | n | final metric IQM [95% CI] | median |" + (" seed spread |" if spread else "")
                   + " env steps to 50% / 90% | seconds to 50% / 90% | reached 50% / 90% | env steps spent | seconds spent |"),
                  "|---|---|---|---|---|" + ("---|" if spread else "") + "---|---|---|---|---|"]
        for row in sorted(rows, key=lambda row: -row["iqm"]):
            result: Cell = row["cell"]
            partial = "" if result.n >= expected else f" ({result.n} of {expected} {unit})"
            seed_spread = f" {result.seed_spread:.3f} |" if spread else ""
            lines.append(
                f"| {row['method']} | {round(spec[row['method']].budget * config.budget_scale.get(env_id, 1)):,} | {result.n} | {result.text()}{partial} "
                f"| {row['median']:.3f} |{seed_spread} {_cost(row, 'steps', 50, row['runs'])} / {_cost(row, 'steps', 90, row['runs'])} "
                f"| {_cost(row, 'seconds', 50, row['runs'])} / {_cost(row, 'seconds', 90, row['runs'])} "
                f"| {row['reached_50']}/{row['runs']} / {row['reached_90']}/{row['runs']} "
                f"| {row['env_steps']:,.0f} | {row['wall_time']:.1f} |")
        skipped = [label for label in config.methods if not config.runs_on(label, env_id)]
        if skipped:
            lines += ["", f"Not run on this task (chosen up front: the config's `envs` of each): {', '.join(skipped)}."]
        lines.append("")
    if config.protocol == "instance" and len(tables) > 1:
        lines += _across_lines(tables, config)
    families = stage_families(config)
    if families and config.protocol == "instance":
        lines += _stage_lines(tables, config, families, _plot_stages(config, records, families, out / "stages.png"))
    lines += [f"![metric against env steps]({plots[0].name})" if plots[0] else "",
              f"![metric against wall time]({plots[1].name})" if plots[1] else "", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _seed_list(seeds: tuple[int, ...]) -> str:
    """``0-9`` for a run of consecutive seeds, else the seeds."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _cost(row: dict[str, Any], kind: str, percent: int, runs: int) -> str:
    value = row[f"{kind}_{percent}"]
    if not math.isfinite(value) or 2 * row[f"reached_{percent}"] < runs:
        return "-"
    return f"{value:,.0f}" if kind == "steps" else f"{value:.1f}"


def _plot_curves(config: StudyConfig, records: list[RunRecord], column: int, path: Path) -> Path | None:
    """Median and interquartile range over seeds of the best metric so far, one panel per env."""
    envs = [env_id for env_id in config.envs if any(r.env_id == env_id for r in records)]
    panels = _panels(len(envs)) if envs else None
    if panels is None:
        return None
    fig, axes, colors = panels
    for ax, env_id in zip(axes[0], envs):
        for index, label in enumerate(config.methods):
            runs = [r for r in records if r.env_id == env_id and r.method == label and len(r.curve)]
            if not runs:
                continue
            end = max(r.curve[-1, column] for r in runs)
            grid = np.linspace(0.0, end, 200)
            values = np.array([_step_values(r.curve, column, grid) for r in runs])
            with warnings.catch_warnings():  # all-NaN columns before the first evaluation
                warnings.simplefilter("ignore", category=RuntimeWarning)
                median = np.nanmedian(values, axis=0)
                low, high = np.nanpercentile(values, 25, axis=0), np.nanpercentile(values, 75, axis=0)
            style = "-" if config.methods[label].kind == "optimize" else "--"
            ax.plot(grid, median, style, color=colors(index % 10), label=label)
            ax.fill_between(grid, low, high, color=colors(index % 10), alpha=0.2, linewidth=0)
        ax.set_title(task_name(env_id))
        ax.set_xlabel("env steps" if column == 0 else "wall time [s]")
        if column == 0:
            ax.set_xscale("symlog", linthresh=100)
        ax.set_ylabel("metric (best so far)")
    return _finish(fig, axes, config, path)


def _panels(count: int):
    """A figure of ``count`` panels side by side with room for one legend on the right, its axes and the
    method colours; None without matplotlib."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed: no plots (pip install diffenvs[rl])")
        return None
    fig = Figure(figsize=(4.2 * count + 0.9, 3.4))
    return fig, fig.subplots(1, count, squeeze=False), matplotlib.colormaps["tab10"]


def _finish(fig, axes, config: StudyConfig, path: Path) -> Path | None:
    """One legend for all panels (every method once, in the config's order), then save; None if nothing
    was drawn."""
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:
        return None
    ordered = [label for label in config.methods if label in handles]
    fig.legend([handles[label] for label in ordered], ordered, fontsize=8, loc="center right")
    width = fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, 1 - 0.9 / width, 1))
    fig.savefig(path, dpi=90)
    return path


def _step_values(curve: np.ndarray, column: int, grid: np.ndarray) -> np.ndarray:
    """A run's best metric at each grid point (NaN before its first evaluation)."""
    index = np.searchsorted(curve[:, column], grid, side="right") - 1
    return np.where(index >= 0, curve[np.maximum(index, 0), 2], np.nan)


__all__ = ["MIN_FOR_INTERVAL", "Cell", "RunRecord", "across_tasks", "cell", "first_reaching", "interval", "iqm", "load_runs",
           "stage_families", "summarize", "write_report"]
