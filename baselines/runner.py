"""The trajectory optimizers as registered methods, and the code behind ``diffenvs optimize``.

:class:`OptimizerMethod` is the :class:`~diffenvs.baselines.method.Method` of every optimizer of
:func:`~diffenvs.baselines.trajopt.optimize` (``adam``, ``cem``, ...): its configuration is
:class:`RunConfig` resolved from the packaged ``configs/optimize.yaml`` (the dataclasses' defaults,
then the env id's ``per_env`` section, then the request's options), its result the best action
sequence (``best.npz``), loaded back as a :class:`~diffenvs.baselines.method.SequencePolicy`.

A run writes the run directory of :mod:`diffenvs.baselines.rundir` into
``<out_dir>/<Task>-<method>-s<seed>-<time>/`` (or ``out_dir/run_name``), plus ``curve.png`` (loss
and metric against simulated env steps) and ``best.gif`` (the best sequence replayed in the
reported setting). ``log.csv`` holds one row per iteration (the budget, the iteration's loss and
metric, the best so far, and the method's own entries: return, gradient norm, step size, remedies;
CEM's std). ``best.npz`` (``actions``, ``loss``, ``metric``, ``iteration``) is replaced atomically
whenever the best sequence improves. Every file is valid at every moment: Ctrl-C
(``KeyboardInterrupt``) keeps the rows and the best sequence and writes the summary, plot and GIF.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffenvs.baselines.method import Method, Request, SequencePolicy
from diffenvs.baselines.problem import Problem, ProblemConfig
from diffenvs.baselines.rundir import Run, RunWriter, read_run
from diffenvs.baselines.solver_config import SolverConfig
from diffenvs.baselines.trajopt import optimize
from diffenvs.config import ConfigError, apply_overrides, deep_merge, from_dict, read_yaml, to_dict
from diffenvs.registration import task_name

logger = logging.getLogger(__name__)

CHOSEN_BY_REQUEST = ("problem.env_id", "problem.seed", "solver.seed", "solver.method", "solver.budget")
"""Keys of ``configs/optimize.yaml`` that a :class:`~diffenvs.baselines.method.Request` fixes (not an option)."""


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


def default_config_path() -> Path:
    """The packaged ``configs/optimize.yaml``."""
    from diffenvs.configs import CONFIG_DIR

    return CONFIG_DIR / "optimize.yaml"


def resolve_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a run config: :class:`RunConfig`'s defaults, the file's values (default: the packaged
    ``configs/optimize.yaml``), its ``per_env`` section for the chosen env id, then ``overrides``.

    ``per_env`` maps env ids to partial configs (defaults that suit the task, such as its
    remedies). Overrides use dotted keys (``solver.gradient.lr``) and win over both.

    Raises:
        ConfigError: unknown keys, wrong types or invalid values (the message names them).
    """
    path = default_config_path() if path is None else path
    values = read_yaml(path)
    per_env = values.pop("per_env", {}) or {}
    if not isinstance(per_env, dict):
        raise ConfigError(f"{path}: per_env must map env ids to partial configs")
    overrides = dict(overrides or {})
    env_id = overrides.get("problem.env_id", values.get("problem", {}).get("env_id", ProblemConfig.env_id))
    values = deep_merge(values, per_env.get(env_id, {}))
    return from_dict(RunConfig, apply_overrides(values, overrides), where=str(path))


class OptimizerMethod(Method):
    """A trajectory optimizer as a registered method (see the module docstring)."""

    kind = "optimizer"
    config_class = RunConfig

    def run_config(self, request: Request, *, instance: int | None = None, out_dir: str = "runs",
                   run_name: str = "run") -> RunConfig:
        """The :class:`RunConfig` of ``request`` on ``instance`` (default: the request's): with a
        budget, iterations are bounded by it alone (the budget decides the length); on held-out
        instances each gets an equal share of the budget.

        Raises:
            ConfigError: an unknown or invalid option, or one the request fixes.
        """
        for key in request.options:
            if key in CHOSEN_BY_REQUEST:
                raise ConfigError(f"{key!r} is chosen by the request (env, instance, seed, method, budget), not an option")
        instance = request.instance if instance is None else instance
        if instance is None:  # the configuration of held-out instances: recorded with the method's seed
            instance = request.seed
        budget = request.budget
        if budget is not None and request.instance is None:
            budget = max(1, budget // len(request.eval_seeds))
        fixed = {"problem.env_id": request.env_id, "problem.seed": instance, "solver.seed": request.seed,
                 "solver.method": self.name, "solver.budget": budget}
        config = resolve_config(None, fixed)
        env_kwargs = dict(request.env_kwargs)
        episode = env_kwargs.pop("max_episode_steps", None)  # the episode length: the sequence's length here
        defaults: dict[str, Any] = {"out_dir": out_dir, "run_name": run_name, "gif": False, "plot": False}
        if budget is not None:  # every iteration costs at least one rollout, so this many always suffice
            horizon = episode or config.problem.horizon or _episode_steps(request.env_id)
            defaults["solver.iters"] = defaults["solver.random.samples"] = math.ceil(budget / horizon)
        if episode is not None:
            defaults["problem.horizon"] = episode
        if env_kwargs:
            defaults["problem.env_kwargs"] = {**config.problem.env_kwargs, **env_kwargs}
        return resolve_config(None, {**fixed, **defaults, **request.options})

    def resolve(self, request: Request) -> dict[str, Any]:
        resolved = to_dict(self.run_config(request))
        for key in ("out_dir", "run_name"):
            resolved.pop(key)
        return resolved

    def solve(self, request: Request, run_dir: str | Path, *, progress: bool = False) -> Run:
        run_dir = Path(run_dir)
        if request.instance is not None:
            config = self.run_config(request, out_dir=str(run_dir.parent), run_name=run_dir.name)
            return run_optimize(config, progress=progress, device=request.device, request=request, exist_ok=False).run
        return self._solve_held_out(request, run_dir, progress=progress)

    def _solve_held_out(self, request: Request, run_dir: Path, *, progress: bool) -> Run:
        """Each held-out instance with an equal share of the budget, one after the other
        (``run_dir/instance-<seed>/``); the curve is the mean best metric over the instances against
        the total env steps and seconds spent, as if they ran side by side."""
        writer = RunWriter(run_dir, method=self, request=request, resolved=self.resolve(request),
                           metric_name=_metric_name(request.env_id))
        runs = []
        for instance in request.eval_seeds:
            sub = dataclasses.replace(request, instance=instance, eval_seeds=())
            config = self.run_config(request, instance=instance, out_dir=str(run_dir), run_name=f"instance-{instance}")
            run = run_optimize(config, progress=progress, device=request.device, request=sub, exist_ok=False).run
            if run.status == "interrupted":
                return writer.finish("interrupted", artifact=None)
            runs.append(run.curve)
        grid = np.unique(np.concatenate([curve[:, 0] for curve in runs]))
        for steps in grid:
            values, seconds = [], []
            for curve in runs:
                index = np.searchsorted(curve[:, 0], steps, side="right") - 1
                values.append(curve[index, 3] if index >= 0 else 0.0)
                seconds.append(curve[max(index, 0), 1] if index >= 0 else 0.0)
            mean = float(np.mean(values))
            writer.point(int(steps * len(runs)), float(np.sum(seconds)), mean, best_metric=mean)
        return writer.finish("finished", artifact=None)

    def load(self, run_dir: str | Path) -> SequencePolicy | None:
        run = read_run(run_dir)
        if run.summary["artifact"] is None:
            return None
        with np.load(Path(run_dir) / run.summary["artifact"]) as saved:
            return SequencePolicy(saved["actions"])


def _episode_steps(env_id: str) -> int:
    import gymnasium as gym

    import diffenvs  # noqa: F401  (registers the ids)

    return int(gym.spec(env_id).max_episode_steps)


def _metric_name(env_id: str) -> str:
    from diffenvs.registration import metric_name

    return metric_name(env_id)


@dataclasses.dataclass
class RunResult:
    """A finished (or interrupted) run: its directory, status, result (``None`` if interrupted
    before a result) and the run as :func:`~diffenvs.baselines.rundir.read_run` reads it."""

    run_dir: Path
    status: str
    result: Any
    run: Run


def run_optimize(config: RunConfig, *, progress: bool = True, device: str | None = None, request: Request | None = None,
                 exist_ok: bool | None = None) -> RunResult:
    """Optimize as configured and write the run directory (see the module docstring).

    ``request``: what :class:`OptimizerMethod` was asked (recorded in ``config.yaml``); by default
    the one ``config`` describes.
    """
    from tqdm.auto import tqdm

    from diffenvs.baselines.method import get_method

    method = get_method(config.solver.method)
    if request is None:
        request = Request(env_id=config.problem.env_id, seed=config.solver.seed, instance=config.problem.seed,
                          budget=config.solver.budget, env_kwargs=dict(config.problem.env_kwargs), device=device)
    problem = Problem(config.problem, device=device)
    task = task_name(config.problem.env_id)
    name = config.run_name or f"{task}-{config.solver.method}-s{config.problem.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.out_dir) / name
    resolved = {key: value for key, value in to_dict(config).items() if key not in ("out_dir", "run_name")}
    writer = RunWriter(run_dir, method=method, request=request, resolved=resolved, metric_name=problem.metric_name,
                       exist_ok=config.run_name is not None if exist_ok is None else exist_ok)
    bar = tqdm(total=expected_records(problem, config.solver), disable=not progress, unit="it",
               desc=f"{config.solver.method} on {task}")
    rows: list[dict[str, Any]] = []
    best_seen = [math.inf]

    def on_record(record: dict[str, Any], best_actions: np.ndarray) -> None:
        writer.log(record)
        writer.point(record["env_steps"], record["wall_time"], record["metric"], best_metric=record["best_metric"])
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
    run = writer.finish(status, artifact="best.npz", stopped=result.stopped if result else None,
                        horizon=problem.horizon, initial_loss=problem.initial_loss,
                        best_loss=rows[-1]["best_loss"] if rows else None,
                        budget=result.budget if result else (_budget_of(rows[-1]) if rows else None))
    if config.plot and rows:
        plot_history(rows, run_dir / "curve.png", title=f"{config.problem.env_id} / {config.solver.method}",
                     metric_name=problem.metric_name)
    if config.gif and (run_dir / "best.npz").exists():
        write_episode_gif(problem, np.load(run_dir / "best.npz")["actions"], run_dir / "best.gif")
    problem.close()
    return RunResult(run_dir=run_dir, status=status, result=result, run=run)


def expected_records(problem: Problem, solver: SolverConfig) -> int:
    """History rows a method writes (the progress bar's total)."""
    if solver.method == "random":
        return math.ceil(solver.random.samples / problem.config.eval_batch)
    if solver.method == "mpc":
        return math.ceil(problem.horizon / solver.mpc.execute)
    if solver.method == "hybrid":
        return solver.hybrid.cem_iters + solver.iters
    return solver.iters


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
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed: no plot (pip install diffenvs[rl])")
        return
    steps = [r["env_steps"] for r in rows]
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
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


__all__ = ["OptimizerMethod", "RunConfig", "RunResult", "plot_history", "resolve_config", "run_optimize", "write_episode_gif"]
