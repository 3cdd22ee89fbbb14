"""Run directories for trajectory optimization: the code behind ``diffenvs optimize``.

A run writes, into ``<out_dir>/<Task>-<method>-s<seed>-<time>/`` (or ``out_dir/run_name``):

- ``config.yaml``: the resolved configuration (YAML defaults, per-env section, overrides);
- ``history.csv``: one row per iteration, appended and flushed as it happens;
- ``best.npz``: the best action sequence so far (``actions``, ``loss``, ``metric``,
  ``iteration``), replaced atomically whenever it improves;
- ``summary.json``: the result, the budget and the status (``finished``, ``stopped`` or
  ``interrupted``);
- ``curve.png``: loss and metric against simulated env steps (needs matplotlib);
- ``best.gif``: the best sequence replayed in the reported setting.

Every file is valid at every moment: a run killed with Ctrl-C (``KeyboardInterrupt``) keeps the
rows, the best sequence so far and writes the summary, plot and GIF before returning.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffenvs.baselines.problem import Problem, ProblemConfig
from diffenvs.baselines.trajopt import SolverConfig, TrajOptResult, optimize
from diffenvs.config import ConfigError, apply_overrides, deep_merge, from_dict, read_yaml, to_dict, write_yaml

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything ``diffenvs optimize`` needs (``configs/optimize.yaml``).

    Attributes:
        problem: What is optimized (env id, seed, horizon, env kwargs).
        solver: How (method, iterations, options).
        out_dir: Parent folder of run directories.
        run_name: Name of the run directory; ``None``: ``<Task>-<method>-s<seed>-<time>``.
        gif: Write ``best.gif``.
        plot: Write ``curve.png``.
    """

    problem: ProblemConfig = dataclasses.field(default_factory=ProblemConfig)
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    out_dir: str = "runs/optimize"
    run_name: str | None = None
    gif: bool = True
    plot: bool = True


def resolve_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a run config: the file's values, then its ``per_env`` section for the chosen env id, then ``overrides``.

    ``per_env`` maps env ids to partial configs (defaults that suit the task, such as its
    remedies). Overrides use dotted keys (``solver.gradient.lr``) and win over both.

    Raises:
        ConfigError: unknown keys, wrong types or invalid values (the message names them).
    """
    values = read_yaml(path)
    per_env = values.pop("per_env", {}) or {}
    if not isinstance(per_env, dict):
        raise ConfigError(f"{path}: per_env must map env ids to partial configs")
    overrides = dict(overrides or {})
    env_id = overrides.get("problem.env_id", values.get("problem", {}).get("env_id", ProblemConfig.env_id))
    values = deep_merge(values, per_env.get(env_id, {}))
    return from_dict(RunConfig, apply_overrides(values, overrides), where=str(path))


@dataclasses.dataclass
class RunResult:
    """A finished (or interrupted) run: its directory, status and result (``None`` if interrupted before a result)."""

    run_dir: Path
    status: str
    result: TrajOptResult | None


def expected_records(problem: Problem, solver: SolverConfig) -> int:
    """History rows a method writes (the progress bar's total)."""
    if solver.method == "random":
        return math.ceil(solver.random.samples / problem.config.eval_batch)
    if solver.method == "mpc":
        return math.ceil(problem.horizon / solver.mpc.execute)
    if solver.method == "hybrid":
        return solver.hybrid.cem_iters + solver.iters
    return solver.iters


def run_optimize(config: RunConfig, *, progress: bool = True, device: str | None = None) -> RunResult:
    """Optimize as configured and write the run directory (see the module docstring)."""
    from tqdm.auto import tqdm

    problem = Problem(config.problem, device=device)
    task = config.problem.env_id.split("/")[-1].split("-v")[0]
    name = config.run_name or f"{task}-{config.solver.method}-s{config.problem.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.out_dir) / name
    run_dir.mkdir(parents=True, exist_ok=config.run_name is not None)
    write_yaml(run_dir / "config.yaml", to_dict(config))
    bar = tqdm(total=expected_records(problem, config.solver), disable=not progress, unit="it",
               desc=f"{config.solver.method} on {task}")
    rows: list[dict[str, Any]] = []
    best_seen = [math.inf]
    with open(run_dir / "history.csv", "w", newline="", encoding="utf-8") as handle:
        writer: csv.DictWriter | None = None

        def on_record(record: dict[str, Any], best_actions: np.ndarray) -> None:
            nonlocal writer
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(record), extrasaction="ignore")
                writer.writeheader()
            writer.writerow(record)
            handle.flush()
            rows.append(record)
            if record["best_loss"] < best_seen[0]:
                best_seen[0] = record["best_loss"]
                _write_npz(run_dir / "best.npz", actions=best_actions, loss=record["best_loss"],
                           metric=record["best_metric"], iteration=record["iteration"])
            bar.set_postfix(loss=f"{record['best_loss']:.4g}", **{problem.metric_name: f"{record['best_metric']:.3f}"},
                            steps=record["env_steps"])
            bar.update()

        result, status = None, "finished"
        try:
            result = optimize(problem, config.solver, callback=on_record)
            status = "stopped" if result.stopped else "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            logger.warning("interrupted: %s keeps the rows and the best sequence so far", run_dir)
        finally:
            bar.close()
    summary = {
        "status": status, "env_id": config.problem.env_id, "method": config.solver.method, "seed": config.problem.seed,
        "horizon": problem.horizon, "metric_name": problem.metric_name, "initial_loss": problem.initial_loss,
        "iterations": len(rows),
        "best_loss": rows[-1]["best_loss"] if rows else None, "best_metric": rows[-1]["best_metric"] if rows else None,
        "budget": result.budget if result else (_budget_of(rows[-1]) if rows else None),
        "stopped": result.stopped if result else None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if config.plot and rows:
        plot_history(rows, run_dir / "curve.png", title=f"{config.problem.env_id} / {config.solver.method}",
                     metric_name=problem.metric_name)
    if config.gif and (run_dir / "best.npz").exists():
        write_episode_gif(problem, np.load(run_dir / "best.npz")["actions"], run_dir / "best.gif")
    problem.close()
    return RunResult(run_dir=run_dir, status=status, result=result)


def _budget_of(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("env_steps", "forward_steps", "backward_steps", "eval_steps", "grad_evals", "rollouts", "wall_time")
    return {key: record[key] for key in keys}


def _write_npz(path: Path, **arrays: Any) -> None:
    """Write an npz atomically (a reader never sees a half-written file)."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def plot_history(rows: list[dict[str, Any]], path: Path, *, title: str, metric_name: str) -> None:
    """Best loss and metric so far against simulated env steps; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no plot (pip install diffenvs[rl])")
        return
    steps = [r["env_steps"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(steps, [r["best_loss"] for r in rows], label="best so far")
    axes[0].plot(steps, [r["loss"] for r in rows], ".", ms=3, alpha=0.6, label="iteration")
    axes[0].set_ylabel("task loss")
    axes[0].legend()
    axes[1].plot(steps, [r["best_metric"] for r in rows])
    axes[1].set_ylabel(metric_name)
    for ax in axes:
        ax.set_xlabel("env steps simulated (forward + backward + replays)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_episode_gif(problem: Problem, actions: np.ndarray, path: Path) -> None:
    """Replay ``actions`` from the problem's initial state in the reported setting and write a GIF."""
    from diffenvs.baselines.demo import write_gif

    env = problem.single_env(render_mode="rgb_array")
    env.set_state(problem.initial_state)
    frames = [env.render()]
    for action in actions:
        if env.step(action)[4].get("diverged"):
            break
        frames.append(env.render())
    write_gif(path, frames, fps=env.metadata["render_fps"])
    env.close()


__all__ = ["RunConfig", "RunResult", "plot_history", "resolve_config", "run_optimize", "write_episode_gif"]
