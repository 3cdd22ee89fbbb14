"""Executing a study: one registered method's :meth:`~diffenvs.baselines.method.Method.solve` per run.

Runs are resumable: a run is solved in a scratch directory, its files are returned to the driver,
which writes them into ``runs/.<name>.tmp`` and renames it when whole, so a killed study loses at
most the runs in flight, and a restart skips finished runs (if their ``job.json`` matches the job
and its resolved configuration) and writes the same report. Where runs execute and how they stop
is :mod:`diffenvs.baselines.scheduler`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from diffenvs.baselines.method import get_method
from diffenvs.baselines.scheduler import BACKENDS, scratch
from diffenvs.baselines.study import RunJob, StudyConfig, comparable, job_dict, select, write_config
from diffenvs.config import ConfigError
from diffenvs.registration import task_name

logger = logging.getLogger(__name__)


class RunInterrupted(RuntimeError):
    """A run stopped by Ctrl-C: it is not stored, a restart runs it again."""


PROGRESS_EVERY_S = 30.0
"""A run's progress line comes at most this often (and at its first and last evaluation)."""


def execute(job: RunJob, progress: bool = False) -> dict[str, bytes]:
    """Run one job in a scratch directory and return its files (relative path -> bytes): the run
    directory of its method, plus ``job.json``. Returning the files (instead of writing into the
    study directory) lets a Ray worker on another machine take part. ``progress``: print a line when
    the run starts and at its evaluations (method, env, instance, env steps, metric so far; at most
    one per :data:`PROGRESS_EVERY_S` seconds).

    Raises:
        RunInterrupted: the run was interrupted (Ctrl-C reaches the workers too).
    """
    from diffenvs.baselines import rundir
    from diffenvs.warp_util import quiet_warp

    quiet_warp()  # no banner and no module-load lines from every worker
    logging.getLogger("diffenvs").setLevel(logging.WARNING)
    where = f"{job.label} on {task_name(job.env_id)} instance {job.seed}" + ("" if job.train_seed is None else f" seed {job.train_seed}")
    last = [-math.inf]

    def report(env_steps: int, wall_time: float, metric: float, best: float) -> None:
        if wall_time - last[0] >= PROGRESS_EVERY_S or env_steps >= job.spec.budget:
            last[0] = wall_time
            print(f"  {where}: {env_steps:,} of {job.spec.budget:,} env steps, metric {metric:.3f} (best {best:.3f}), "
                  f"{wall_time:.0f} s", flush=True)

    if progress:
        print(f"  start {where} ({job.spec.budget:,} env steps)", flush=True)
    rundir.progress_listener = report if progress else None
    with scratch() as path:
        run = get_method(job.spec.method).solve(job.request(), Path(path) / "run")
        if run.status == "interrupted":
            raise RunInterrupted(f"{job.name} was interrupted")
        (run.path / "job.json").write_text(json.dumps(job_dict(job), indent=2), encoding="utf-8")
        return {str(file.relative_to(run.path)): file.read_bytes()
                for file in sorted(run.path.rglob("*")) if file.is_file() and "tensorboard" not in file.parts}


@dataclasses.dataclass
class StudyResult:
    """What :func:`run_study` did."""

    out_dir: Path
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    report: Path | None


def run_study(config: StudyConfig, *, backend: str = "pool", address: str | None = None, progress: bool = True,
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

    from diffenvs.baselines.report import write_report

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    chosen = select(config, methods=methods, envs=envs, seeds=seeds)
    out = Path(config.out_dir)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_config(config)
    for job in chosen:  # its runs in flight when a previous study was killed (not other parts': another process's)
        shutil.rmtree(runs_dir / f".{job.name}.tmp", ignore_errors=True)
    todo, skipped = [], []
    for job in chosen:
        done = runs_dir / job.name / "job.json"
        if done.exists():
            if comparable(json.loads(done.read_text(encoding="utf-8"))) != comparable(job_dict(job)):
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
            BACKENDS[backend](functools.partial(execute, progress=progress), todo, config.workers, finished, address=address)
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


__all__ = ["RunInterrupted", "StudyResult", "execute", "run_study"]
