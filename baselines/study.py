"""The RL-versus-gradient comparison study: the code behind ``diffenvs compare``.

A study runs every method on every task and problem instance (a reset seed: its start state and
target) and reports which wins, by how much, and at what cost. The protocol (``protocol:
instance``; ``protocol: generalize`` instead judges policies trained on random instances on
held-out ones, see :class:`StudyConfig`):

- every method gets the same instance: the optimizers (``kind: optimize``, the methods of
  :func:`~diffenvs.baselines.trajopt.optimize` with ``configs/optimize.yaml`` and its per-env
  section) optimize an action sequence from it; the RL algorithms (``kind: train``, ``configs/rl``)
  train on it (every episode resets to that instance, ``TrainConfig.instance``);
- every method is judged in the reported setting (the study's ``env_kwargs`` per env: hard tools,
  no contact loss), by the task metric (``info[task.metric]``: 0 at the start state, 1 solved):
  an optimizer by its best sequence, an RL algorithm by the deterministic episode of its best
  evaluated policy (rl-zoo3's ``best_model``);
- budgets are simulated env steps (forward, backward and replays counted as
  :class:`~diffenvs.baselines.problem.Budget` counts them; RL: training env steps), and wall time
  is recorded at every evaluation of every run. An optimizer never exceeds its budget
  (``SolverConfig.budget``: it stops before an iteration that would); an RL algorithm finishes its
  last rollout (PPO: up to ``n_envs * n_steps`` steps past the budget), as stable-baselines3 does.
  Each run's spent env steps are in the report.

The study directory (``out_dir``) holds ``study.yaml`` (the config, less ``out_dir`` and ``workers``), ``runs/<Task>-<method>-s<seed>/``
(each run's own directory, as ``diffenvs optimize`` or ``diffenvs train`` write it, plus ``job.json``,
``curve.csv``: env steps, wall time and the best metric so far at every evaluation, and
``result.json``), and the report: ``report.md`` (a table per task), ``final.csv`` (one row per
run), ``steps.png`` and ``time.png`` (metric against env steps and wall time: median and
interquartile range over seeds, one panel per task).

Runs are resumable: a run is written into ``runs/.<name>.tmp`` and renamed when it has finished,
so a killed study loses at most the runs in flight, and a restart skips finished runs and writes
the same report (the bootstrap is seeded; the report reads only the run files). Runs never share a
process (Warp's tape is global): a local process pool by default (``backend="pool"``, a fresh
process per run), or Ray (``backend="ray"``: the cluster at ``address``, or a local instance);
both execute the same function, which returns the run's files to the driver, which writes them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import inspect
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diffenvs.config import ConfigError, from_dict, read_yaml, to_dict, write_yaml

logger = logging.getLogger(__name__)

Kind = Literal["optimize", "train"]
Backend = Literal["pool", "ray"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
THRESHOLDS = (0.5, 0.9)
"""Fractions of the best result whose cost the report gives (env steps and seconds to reach them)."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method of a study (a row of every task's table).

    Attributes:
        kind: ``optimize`` (a trajectory optimizer) or ``train`` (an RL algorithm).
        method: The optimizer (one of :data:`~diffenvs.baselines.trajopt.METHODS`) or the
            algorithm (``ppo``, ``sac``, ``td3``; ``apg``, ``shac`` through the simulator).
        budget: Env steps the method may simulate on one instance.
        set: Overrides: for ``optimize``, dotted keys of ``configs/optimize.yaml``
            (``solver.cem.population``); for ``train``, rl-zoo3 hyperparameters (``learning_rate``).
        eval_every: ``train``: env steps between evaluations of the policy; ``None``: a twentieth
            of the budget.
        n_envs: ``train``: worlds of the training vector env; ``None``: the hyperparameter file's.
    """

    kind: Kind
    method: str
    budget: int
    set: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_every: int | None = None
    n_envs: int | None = None

    def __post_init__(self) -> None:
        from diffenvs.baselines.rl import ALGOS
        from diffenvs.baselines.trajopt import METHODS

        choices = METHODS if self.kind == "optimize" else ALGOS
        if self.method not in choices:
            raise ValueError(f"method {self.method!r} is not one of the {self.kind} methods {list(choices)}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 env step, got {self.budget}")
        if self.kind == "optimize" and (self.eval_every is not None or self.n_envs is not None):
            raise ValueError("eval_every and n_envs are options of kind: train")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A study: methods x envs x seeds (``configs/study/<name>.yaml``).

    Attributes:
        name: Title of the report.
        envs: Registered env ids (one panel and one table each).
        seeds: Problem instances (reset seeds); also the seed of each method's own randomness.
        methods: Label -> method (the labels name the runs and the rows of the tables).
        env_kwargs: Env id -> env keyword arguments of the reported setting, for every method on
            that env (e.g. ``{tool_softness: 0.0}``: hard tools); envs not listed use their defaults.
            ``max_episode_steps`` (``gym.make``'s) sets the episode length for every method: the
            learners' episodes and the optimizers' sequence length (``problem.horizon``).
        out_dir: The study directory.
        workers: Runs at the same time (processes of the pool; Ray tasks in flight).
        bootstrap_reps: Bootstrap resamples of the confidence intervals.
        protocol: ``instance``: every method on each instance of ``seeds`` (optimizers optimize it,
            learners train on it). ``generalize``: policies train on random instances (``seeds``
            seed their training) and are judged, by their final policy, on the held-out instances
            ``test_seeds``; the optimizers solve each held-out instance with an equal share of the
            same total budget (per-instance Adam against one policy for all).
        test_seeds: ``generalize``: the held-out instances (reset seeds).
    """

    name: str
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: dict[str, MethodSpec]
    env_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    out_dir: str = "runs/study"
    workers: int = 2
    bootstrap_reps: int = 2000
    protocol: Literal["instance", "generalize"] = "instance"
    test_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.envs or not self.seeds or not self.methods:
            raise ValueError("envs, seeds and methods must not be empty")
        if (self.protocol == "generalize") != bool(self.test_seeds):
            raise ValueError("test_seeds: needed by protocol generalize, and only by it")
        if len(set(self.test_seeds)) != len(self.test_seeds):
            raise ValueError("test_seeds must not repeat")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.envs)) != len(self.envs):
            raise ValueError("envs and seeds must not repeat")
        unknown = sorted(set(self.env_kwargs) - set(self.envs))
        if unknown:
            raise ValueError(f"env_kwargs names envs that are not in envs: {unknown}")
        for label in self.methods:
            if not label.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"method label {label!r}: letters, digits, '-' and '_' only (it names directories)")
        if self.workers < 1 or self.bootstrap_reps < 100:
            raise ValueError("workers must be >= 1 and bootstrap_reps >= 100")


class RunInterrupted(RuntimeError):
    """A run stopped by Ctrl-C: it is not stored, a restart runs it again."""


@dataclasses.dataclass(frozen=True)
class RunJob:
    """One run of a study: a method on one instance of one env (what a worker receives)."""

    name: str
    env_id: str
    label: str
    seed: int
    spec: MethodSpec
    env_kwargs: dict[str, Any]
    test_seeds: tuple[int, ...] = ()  # protocol generalize: the held-out instances


def task_name(env_id: str) -> str:
    """``DiffEnvs/RollingPin-v0`` -> ``RollingPin``."""
    return env_id.split("/")[-1].split("-v")[0]


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and check a study config (``overrides``: top-level keys such as ``out_dir``), before any run.

    Checks the keys and types, that every env id is registered, and every method's overrides
    (optimizer keys through ``configs/optimize.yaml``; RL keys against the algorithm's arguments).

    Raises:
        ConfigError: naming the bad key.
    """
    values = {**read_yaml(path), **(overrides or {})}
    config = from_dict(StudyConfig, values, where=str(path))
    validate(config, where=str(path))
    return config


def validate(config: StudyConfig, *, where: str = "study") -> None:
    """Check what the dataclasses cannot: env ids, optimizer overrides, RL hyperparameter names.

    Raises:
        ConfigError: naming the bad key.
    """
    import gymnasium as gym

    import diffenvs  # noqa: F401  (registers the ids)

    for env_id in config.envs:
        if env_id not in gym.registry:
            raise ConfigError(f"{where}: envs: unknown env id {env_id!r}; see `diffenvs list`")
    for job in jobs(config):
        try:
            if job.spec.kind == "optimize":
                _optimize_config(job)
            else:
                _check_hyperparams(job)
        except ConfigError as error:
            raise ConfigError(f"{where}: methods.{job.label}: {error}") from None


def jobs(config: StudyConfig) -> list[RunJob]:
    """Every run of the study, method by method (in the config's order: put the cheap ones first, so
    that a study stopped early has every task's cheap rows), env by env, seed by seed."""
    return [RunJob(name=f"{task_name(env_id)}-{label}-s{seed}", env_id=env_id, label=label, seed=seed, spec=spec,
                   env_kwargs=dict(config.env_kwargs.get(env_id, {})), test_seeds=tuple(config.test_seeds))
            for label, spec in config.methods.items() for env_id in config.envs for seed in config.seeds]


def select(config: StudyConfig, *, methods: Iterable[str] | None = None, envs: Iterable[str] | None = None,
           seeds: Iterable[int] | None = None) -> list[RunJob]:
    """The study's runs of some methods (labels) on some envs (ids) and seeds; ``None``: all of them.

    Raises:
        ConfigError: a label, env id or seed that is not in the study.
    """
    given = {"methods": methods, "envs": envs, "seeds": seeds}
    known = {"methods": config.methods, "envs": config.envs, "seeds": config.seeds}
    for key, values in given.items():
        unknown = sorted(set(values or ()) - set(known[key]))
        if unknown:
            raise ConfigError(f"{key} {unknown} are not in the study ({sorted(known[key])})")
    wanted = {key: None if values is None else set(values) for key, values in given.items()}
    return [job for job in jobs(config)
            if all(wanted[key] is None or value in wanted[key]
                   for key, value in (("methods", job.label), ("envs", job.env_id), ("seeds", job.seed)))]


# Running one job (in a worker process) ----------------------------------------------------------------


def _optimize_config(job: RunJob, out_dir: str = "runs", run_name: str = "run", instance: int | None = None) -> Any:
    """The optimizer's run config: on the job's instance, or (protocol generalize) on held-out ``instance``
    with an equal share of the budget."""
    from diffenvs.baselines.runner import resolve_config
    from diffenvs.configs import CONFIG_DIR

    budget = job.spec.budget if not job.test_seeds else max(1, job.spec.budget // len(job.test_seeds))
    instance = job.seed if instance is None else instance
    overrides = {"problem.env_id": job.env_id, "problem.seed": instance, "solver.seed": job.seed,
                 "solver.method": job.spec.method, "solver.budget": budget}
    config = resolve_config(CONFIG_DIR / "optimize.yaml", overrides)
    # The budget decides the length: every iteration costs at least one rollout, so this many always suffice.
    env_kwargs = dict(job.env_kwargs)
    episode = env_kwargs.pop("max_episode_steps", None)  # the episode length: the sequence's length here
    horizon = episode or config.problem.horizon or _episode_steps(job.env_id)
    longest = math.ceil(budget / horizon)
    defaults = {"solver.iters": longest, "solver.random.samples": longest, "out_dir": out_dir, "run_name": run_name,
                "gif": False, "plot": False}
    if episode is not None:
        defaults["problem.horizon"] = episode
    if env_kwargs:
        defaults["problem.env_kwargs"] = {**config.problem.env_kwargs, **env_kwargs}
    for key in job.spec.set:
        if key in ("problem.env_id", "problem.seed", "solver.seed", "solver.method", "solver.budget"):
            raise ConfigError(f"set: {key!r} is chosen by the study")
    return resolve_config(CONFIG_DIR / "optimize.yaml", {**overrides, **defaults, **job.spec.set})


def _episode_steps(env_id: str) -> int:
    import gymnasium as gym

    return int(gym.spec(env_id).max_episode_steps)


def _check_hyperparams(job: RunJob) -> None:
    from diffenvs.baselines.diffrl import DIFF_ALGOS, diffrl_config
    from diffenvs.baselines.rl import SPECIAL_KEYS, load_hyperparams, sb3_class

    section = load_hyperparams(job.spec.method, job.env_id, random_instances=bool(job.test_seeds))
    if job.spec.method in DIFF_ALGOS:
        diffrl_config(section, dict(job.spec.set), where=f"set ({job.spec.method})")
        return
    algo_class = sb3_class(job.spec.method)
    valid = set(inspect.signature(algo_class.__init__).parameters) - {"self", "env", "policy"} | set(SPECIAL_KEYS)
    unknown = sorted(set(job.spec.set) - valid)
    if unknown:
        raise ConfigError(f"set: unknown {job.spec.method} hyperparameter(s) {unknown}")


def execute(job: RunJob) -> dict[str, bytes]:
    """Run one job in a scratch directory and return its files (relative path -> bytes).

    The run's own files (``diffenvs optimize`` or ``diffenvs train``), plus ``job.json``,
    ``curve.csv`` and ``result.json``. Returning the files (instead of writing into the study
    directory) lets a Ray worker on another machine take part.
    """
    import warp as wp

    wp.config.quiet = True  # no banner and no module-load lines from every worker
    wp.config.log_level = 30
    logging.getLogger("diffenvs").setLevel(logging.WARNING)
    with _scratch() as scratch:
        if job.spec.kind == "optimize" and job.test_seeds:
            status, curve, run_dir = _optimize_held_out(job, Path(scratch) / "run")
        elif job.spec.kind == "optimize":
            from diffenvs.baselines.runner import run_optimize

            run = run_optimize(_optimize_config(job, out_dir=scratch), progress=False)
            status, run_dir = run.status, Path(run.run_dir)
            records = _read_csv(run.run_dir / "history.csv")
            curve = [(int(r["env_steps"]), float(r["wall_time"]), float(r["best_metric"])) for r in records]
        else:
            from diffenvs.baselines.rl import TrainConfig, run_train

            spec = job.spec
            config = TrainConfig(env_id=job.env_id, algo=spec.method, steps=spec.budget, seed=job.seed, n_envs=spec.n_envs,
                                 eval_every=spec.eval_every or max(1, spec.budget // 20),
                                 instance=None if job.test_seeds else job.seed, eval_seeds=job.test_seeds or (job.seed,),
                                 env_kwargs=job.env_kwargs, hyperparams=dict(spec.set), out_dir=scratch, run_name="run")
            run = run_train(config, progress=False)
            status, run_dir = run.status, Path(run.run_dir)
            curve, best = [], -math.inf
            for evaluation in run.evaluations:
                # one instance: the best policy so far (its best_model); held-out instances: the current policy
                best = max(best, evaluation["metric_mean"]) if not job.test_seeds else evaluation["metric_mean"]
                curve.append((int(evaluation["env_steps"]), float(evaluation["wall_time"]), best))
        if status == "interrupted":  # Ctrl-C reaches the workers too: such a run is not finished
            raise RunInterrupted(f"{job.name} was interrupted")
        with open(run_dir / "curve.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["env_steps", "wall_time", "metric"])
            writer.writerows([steps, f"{seconds:.3f}", repr(metric)] for steps, seconds, metric in curve)
        last = curve[-1] if curve else (0, 0.0, math.nan)
        result = {"env_id": job.env_id, "method": job.label, "kind": job.spec.kind, "algorithm": job.spec.method,
                  "seed": job.seed, "status": status, "metric": last[2], "env_steps": last[0], "wall_time": last[1]}
        (run_dir / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        (run_dir / "job.json").write_text(json.dumps(_job_dict(job), indent=2), encoding="utf-8")
        return {str(path.relative_to(run_dir)): path.read_bytes()
                for path in sorted(run_dir.rglob("*")) if path.is_file() and "tensorboard" not in path.parts}


def _optimize_held_out(job: RunJob, run_dir: Path) -> tuple[str, list[tuple[int, float, float]], Path]:
    """Protocol generalize: the optimizer on every held-out instance, each with an equal share of the
    budget, one after the other (``run_dir/instance-<seed>/``). The curve is the mean best metric
    over the instances against the total env steps and seconds spent, as if they ran side by side."""
    from diffenvs.baselines.runner import run_optimize

    histories, status = [], "finished"
    for instance in job.test_seeds:
        run = run_optimize(_optimize_config(job, out_dir=str(run_dir), run_name=f"instance-{instance}", instance=instance),
                           progress=False)
        if run.status == "interrupted":
            return run.status, [], run_dir
        rows = _read_csv(run.run_dir / "history.csv")
        histories.append(np.array([[float(r["env_steps"]), float(r["wall_time"]), float(r["best_metric"])] for r in rows]))
    grid = np.unique(np.concatenate([history[:, 0] for history in histories]))
    curve = []
    for steps in grid:
        values, seconds = [], []
        for history in histories:
            index = np.searchsorted(history[:, 0], steps, side="right") - 1
            values.append(history[index, 2] if index >= 0 else 0.0)
            seconds.append(history[max(index, 0), 1] if index >= 0 else 0.0)
        curve.append((int(steps * len(histories)), float(np.sum(seconds)), float(np.mean(values))))
    return status, curve, run_dir


def _job_dict(job: RunJob) -> dict[str, Any]:
    """The job and the configuration it resolves to (``configs/optimize.yaml`` or ``configs/rl``): a
    finished run counts for a restarted study only if both are unchanged (e.g. after a re-tuning)."""
    if job.spec.kind == "optimize":
        resolved = to_dict(_optimize_config(job))
        for key in ("out_dir", "run_name"):
            resolved.pop(key)
    else:
        from diffenvs.baselines.rl import load_hyperparams

        resolved = {**load_hyperparams(job.spec.method, job.env_id, random_instances=bool(job.test_seeds)), **job.spec.set}
    values = dataclasses.asdict(job)
    if not job.test_seeds:
        values.pop("test_seeds")  # protocol instance: as before the generalize protocol existed
    return json.loads(json.dumps({**values, "resolved": resolved}))


def _comparable(job: dict[str, Any]) -> dict[str, Any]:
    """A job dict without what its run ignores: a learner trains for the study's budget, not for its
    section's ``n_timesteps`` (a changed default training length keeps finished runs valid)."""
    resolved = {key: value for key, value in job.get("resolved", {}).items() if key != "n_timesteps"}
    return {**job, "resolved": resolved}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# The driver ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StudyResult:
    """What :func:`run_study` did."""

    out_dir: Path
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    report: Path | None


def run_study(config: StudyConfig, *, backend: Backend = "pool", address: str | None = None, progress: bool = True,
              report: bool = True, methods: Iterable[str] | None = None, envs: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None) -> StudyResult:
    """Run the study's unfinished runs, then write the report (see the module docstring).

    ``methods``, ``envs`` and ``seeds`` (labels, env ids and seeds of the study) run only part of it,
    e.g. one method's runs on one task in a sitting, or two processes on different seeds; the report
    is the whole study's (every finished run).

    Raises:
        ConfigError: an unknown backend, method or env, or a finished run in ``out_dir`` made by a
            different job (another config wrote there: choose another ``out_dir``).
    """
    from tqdm.auto import tqdm

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    chosen = select(config, methods=methods, envs=envs, seeds=seeds)
    out = Path(config.out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    _write_config(config)
    for job in chosen:  # its runs in flight when a previous study was killed (not other parts': another process's)
        shutil.rmtree(runs_dir / f".{job.name}.tmp", ignore_errors=True)
    todo, skipped = [], []
    for job in chosen:
        done = runs_dir / job.name / "job.json"
        if done.exists():
            if _comparable(json.loads(done.read_text(encoding="utf-8"))) != _comparable(_job_dict(job)):
                raise ConfigError(f"{runs_dir / job.name} was run by a different job or configuration than the "
                                  f"config's (compare its job.json); choose another out_dir or remove it")
            skipped.append(job.name)
        else:
            todo.append(job)
    ran: list[str] = []
    failed: dict[str, str] = {}
    bar = tqdm(total=len(todo), disable=not progress or not todo, unit="run", desc=config.name)

    def finished(job: RunJob, files: dict[str, bytes] | None, error: BaseException | None) -> None:
        if error is not None:
            failed[job.name] = f"{type(error).__name__}: {error}"
            logger.error("run %s failed: %s", job.name, failed[job.name])
        else:
            _store(runs_dir, job.name, files or {})
            ran.append(job.name)
        bar.update()
        bar.set_postfix(failed=len(failed))

    try:
        if todo:
            executor = _ray_map if backend == "ray" else _pool_map
            executor(todo, config.workers, finished, address=address)
    finally:
        bar.close()
    report_path = write_report(config) if report else None
    return StudyResult(out_dir=out, ran=ran, skipped=skipped, failed=failed, report=report_path)


def _store(runs_dir: Path, name: str, files: dict[str, bytes]) -> None:
    """Write a run's files into ``.<name>.tmp`` and rename it: a run directory is whole or absent."""
    tmp = runs_dir / f".{name}.tmp"
    for relative, data in files.items():
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.replace(tmp, runs_dir / name)


Finished = Callable[[RunJob, "dict[str, bytes] | None", "BaseException | None"], None]


ORPHAN_GRACE_S = 30.0  # an orphaned worker's time to finish its interrupted run before it exits anyway
_SCRATCH: set[str] = set()  # this process's open run scratch directories (see _scratch)


@contextlib.contextmanager
def _scratch() -> Iterator[str]:
    """A run's scratch directory (``$TMPDIR/diffenvs-run-*``), removed on exit, and known to the
    orphan watcher of :func:`_die_with_parent`, which removes it itself if the run does not stop in time."""
    with tempfile.TemporaryDirectory(prefix="diffenvs-run-") as path:
        _SCRATCH.add(path)
        try:
            yield path
        finally:
            _SCRATCH.discard(path)


def _die_with_parent() -> None:
    """Pool initializer: when the study process ends while this worker runs (``kill``, a scheduler's
    SIGTERM: unlike Ctrl-C these reach the study process only), interrupt the run as Ctrl-C would
    (its scratch directory is removed) and exit, rather than train on for a result nobody stores.
    A run that has not stopped ``ORPHAN_GRACE_S`` seconds later (stuck in a native call that the
    interrupt must wait for) loses its scratch directory and the process exits anyway."""
    import _thread
    import time

    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child
        return

    def watch() -> None:
        parent.join()  # returns when the study process has ended
        _thread.interrupt_main()  # KeyboardInterrupt in the run: the same path as Ctrl-C
        time.sleep(ORPHAN_GRACE_S)
        # the run did not stop in time: the main thread is inside a long native call (a Warp module
        # compiling, a kernel) that the interrupt waits for; os._exit skips its cleanup, so do it here
        for path in list(_SCRATCH):
            shutil.rmtree(path, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=watch, name="diffenvs-watch-study", daemon=True).start()


def _pool_map(todo: list[RunJob], workers: int, finished: Finished, *, address: str | None = None) -> None:
    """A local process pool: one fresh process per run (``spawn``, ``max_tasks_per_child=1``); a
    worker whose study process is killed stops its run and exits (:func:`_die_with_parent`)."""
    if address is not None:
        raise ConfigError("--address is an option of the ray backend")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1,
                                                initializer=_die_with_parent) as pool:
        futures = {pool.submit(execute, job): job for job in todo}
        try:
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                finished(futures[future], None if error else future.result(), error)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ray_map(todo: list[RunJob], workers: int, finished: Finished, *, address: str | None = None) -> None:
    """Ray tasks (one CPU each, a fresh worker process per run: ``max_calls=1``)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'diffenvs[ray]'") from None

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_calls=1)(execute)
        pending = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < workers:
                job = queue.pop(0)
                pending[remote.remote(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                finished(job, ray.get(ready[0]), None)
            except ray.exceptions.RayTaskError as error:
                finished(job, None, error.as_instanceof_cause())
    finally:
        if started:
            ray.shutdown()


# The report ------------------------------------------------------------------------------------------


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


def load_runs(config: StudyConfig) -> list[RunRecord]:
    """The study's finished runs (only those of its jobs), from their ``result.json`` and ``curve.csv``."""
    records = []
    for job in jobs(config):
        run_dir = Path(config.out_dir) / "runs" / job.name
        if not (run_dir / "job.json").exists():
            continue
        result = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        rows = _read_csv(run_dir / "curve.csv")
        curve = np.array([[float(r["env_steps"]), float(r["wall_time"]), float(r["metric"])] for r in rows]).reshape(-1, 3)
        curve = np.concatenate([[[0.0, 0.0, 0.0]], curve])  # nothing spent yet: the start state, metric 0
        records.append(RunRecord(env_id=job.env_id, method=job.label, seed=job.seed, metric=float(result["metric"]),
                                 env_steps=int(result["env_steps"]), wall_time=float(result["wall_time"]), curve=curve))
    return records


def interval(values: Iterable[float], *, reps: int, seed: int = 0) -> tuple[float, float, float]:
    """Interquartile mean of ``values`` and its 95% stratified-bootstrap (percentile) interval (rliable).

    Seeded: rliable's bootstrap draws its resamples from NumPy's global generator (and its
    ``random_state`` argument is ignored by arch 7), so the same data gave different intervals; the
    subclass below draws them from the bootstrap's own seeded generator instead.
    """
    from rliable import metrics
    from rliable.library import StratifiedBootstrap

    class SeededStratifiedBootstrap(StratifiedBootstrap):
        def update_indices(self) -> tuple[np.ndarray, ...]:
            indices = self.generator.choice(self._num_items, self._args_shape, replace=True)
            return (indices, *self._strata_indices)

    scores = np.asarray(list(values), dtype=np.float64).reshape(-1, 1)

    def iqm(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x)])

    bootstrap = SeededStratifiedBootstrap(scores)
    bootstrap.generator = np.random.default_rng(seed)
    low, high = bootstrap.conf_int(iqm, reps=reps, size=0.95, method="percentile").ravel()
    return float(iqm(scores)[0]), float(low), float(high)


def first_reaching(curve: np.ndarray, target: float) -> tuple[float, float]:
    """Env steps and seconds at which a run's best metric first reached ``target`` (inf if never)."""
    hits = np.nonzero(curve[:, 2] >= target)[0] if len(curve) else []
    if len(hits) == 0:
        return math.inf, math.inf
    return float(curve[hits[0], 0]), float(curve[hits[0], 1])


def summarize(config: StudyConfig, records: list[RunRecord]) -> dict[str, list[dict[str, Any]]]:
    """Per env: one row per method with the final metric's IQM and interval and the cost of 50% / 90% of the best."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for env_id in config.envs:
        by_method = {label: sorted((r for r in records if r.env_id == env_id and r.method == label), key=lambda r: r.seed)
                     for label in config.methods}
        rows = []
        for label, runs in by_method.items():
            if not runs:
                continue
            iqm, low, high = interval([r.metric for r in runs], reps=config.bootstrap_reps)
            rows.append({"method": label, "runs": len(runs), "iqm": iqm, "ci_low": low, "ci_high": high,
                         "median": float(np.median([r.metric for r in runs])),
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


def _write_config(config: StudyConfig) -> None:
    """``study.yaml``: what was studied (not where, nor with how many workers: choices of one sitting)."""
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    write_yaml(Path(config.out_dir) / "study.yaml",
               {key: value for key, value in to_dict(config).items() if key not in ("out_dir", "workers")})


def write_report(config: StudyConfig) -> Path:
    """Write ``report.md``, ``final.csv``, ``steps.png`` and ``time.png`` from the finished runs, and
    ``study.yaml`` (the config of this report: a study run with a subset of the config's methods or
    seeds into the same directory rewrites it; the full config's report restores it)."""
    out = Path(config.out_dir)
    _write_config(config)
    records = load_runs(config)
    tables = summarize(config, records)
    with open(out / "final.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env_id", "method", "seed", "metric", "env_steps", "wall_time"])
        writer.writerows([r.env_id, r.method, r.seed, repr(r.metric), r.env_steps, f"{r.wall_time:.3f}"] for r in records)
    plots = [_plot_curves(config, records, column, out / f"{column_name}.png")
             for column, column_name in ((0, "steps"), (1, "time"))]
    total = len(jobs(config))
    seeds = ", ".join(map(str, config.seeds))
    if config.protocol == "instance":
        protocol = (f"Protocol: one instance per run ({len(config.seeds)} instances: seeds {seeds}); the task's metric "
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
             (f"Final metric: interquartile mean over {unit} with its 95% stratified-bootstrap interval (rliable, "
              f"{config.bootstrap_reps} resamples). Cost to reach 50% / 90% of the best method's IQM: median over "
              f"{unit} of the env steps (forward, backward and replays; RL: training steps) and seconds of the "
              f"first evaluation at or above it (`-`: fewer than half reached it; reached: how many did)."), ""]
    for env_id, rows in tables.items():
        spec = {label: config.methods[label] for label in (row["method"] for row in rows)}
        lines += [f"## {env_id}", "",
                  ("| method | budget | final metric IQM [95% CI] | median | env steps to 50% / 90% | seconds to 50% / 90% "
                   "| reached 50% / 90% | env steps spent | seconds spent |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in sorted(rows, key=lambda row: -row["iqm"]):
            partial = "" if row["runs"] >= len(config.seeds) else f" ({row['runs']} of {len(config.seeds)} instances)"
            lines.append(
                f"| {row['method']} | {spec[row['method']].budget:,} | {row['iqm']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]{partial} "
                f"| {row['median']:.3f} | {_cost(row, 'steps', 50, row['runs'])} / {_cost(row, 'steps', 90, row['runs'])} "
                f"| {_cost(row, 'seconds', 50, row['runs'])} / {_cost(row, 'seconds', 90, row['runs'])} "
                f"| {row['reached_50']}/{row['runs']} / {row['reached_90']}/{row['runs']} "
                f"| {row['env_steps']:,.0f} | {row['wall_time']:.1f} |")
        lines.append("")
    lines += [f"![metric against env steps]({plots[0].name})" if plots[0] else "",
              f"![metric against wall time]({plots[1].name})" if plots[1] else "", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _cost(row: dict[str, Any], kind: str, percent: int, runs: int) -> str:
    value = row[f"{kind}_{percent}"]
    if not math.isfinite(value) or 2 * row[f"reached_{percent}"] < runs:
        return "-"
    return f"{value:,.0f}" if kind == "steps" else f"{value:.1f}"


def _plot_curves(config: StudyConfig, records: list[RunRecord], column: int, path: Path) -> Path | None:
    """Median and interquartile range over seeds of the best metric so far, one panel per env."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no plots (pip install diffenvs[rl])")
        return None
    envs = [env_id for env_id in config.envs if any(r.env_id == env_id for r in records)]
    if not envs:
        return None
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs) + 0.9, 3.4), squeeze=False)
    colors = plt.get_cmap("tab10")
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
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    ordered = [label for label in config.methods if label in handles]  # every method once, in the config's order
    fig.legend([handles[label] for label in ordered], ordered, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 0.9 / (4.2 * len(envs) + 0.9), 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _step_values(curve: np.ndarray, column: int, grid: np.ndarray) -> np.ndarray:
    """A run's best metric at each grid point (NaN before its first evaluation)."""
    index = np.searchsorted(curve[:, column], grid, side="right") - 1
    return np.where(index >= 0, curve[np.maximum(index, 0), 2], np.nan)


__all__ = ["BACKENDS", "MethodSpec", "RunJob", "StudyConfig", "StudyResult", "execute", "jobs", "load_study", "run_study",
           "summarize", "validate", "write_report"]
