"""The run directory: one layout for every method, written by :class:`RunWriter`, read by :func:`read_run`.

Every method of :mod:`diffenvs.baselines.method` (``diffenvs optimize``, ``diffenvs train``, a
study's runs) writes::

    config.yaml    the method, the request and the resolved configuration
    curve.csv      env_steps, wall_time, metric, best_metric: one row per evaluation
    log.csv        the method's own diagnostics, one row per iteration or evaluation
                   (an optimizer: loss, gradient norm, step size ...; a learner: return and metric
                   per evaluation instance)
    summary.json   the keys of SUMMARY_KEYS, the same for every method
    train.csv      APG and SHAC only: training diagnostics (losses, gradient norm, saturated
                   actions, reward, value, policy std), one row per ten training windows
    <artifact>     what :meth:`Method.load` reads (``summary["artifact"]``): ``best.npz`` (an
                   optimizer's best sequence), ``best_model.zip`` (stable-baselines3, with
                   ``best_vecnormalize.pkl``), ``best_model.pt`` (APG, SHAC)

``curve.csv``: ``env_steps`` simulated so far (forward, backward and replays; RL: training steps),
``wall_time`` [s] since the run began, ``metric`` the task's metric (``info[task.metric]``: 0 at the
start state, 1 solved) of this evaluation (an optimizer: the iteration's best sequence; a learner:
the current deterministic policy's mean over the judged instances), ``best_metric`` the run's result
so far (the best sequence's, the best evaluated policy's). ``summary.json``'s ``metric`` is the last
``best_metric``, ``final_metric`` the last ``metric``; ``env_steps`` and ``wall_time`` those of the
last row. Files are appended and flushed as they happen: a killed run leaves valid files.

Runs of older layouts (``history.csv`` or ``evaluations.csv`` with a summary keyed ``best_metric`` or
``best_evaluation``; a study's ``result.json``) are converted in place by :func:`upgrade_run`
(``diffenvs upgrade-runs DIR``); :func:`read_run` names that command when it meets one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from diffenvs.config import ConfigError, to_dict, write_yaml

SCHEMA = 2
CURVE_COLUMNS = ("env_steps", "wall_time", "metric", "best_metric")
SUMMARY_KEYS = ("schema", "status", "method", "kind", "env_id", "seed", "instance", "judged_on", "metric_name", "metric",
                "final_metric", "env_steps", "wall_time", "evaluations", "artifact", "stopped")
"""Keys of every ``summary.json`` (a method may add its own after them)."""
STATUSES = ("finished", "stopped", "interrupted")


@dataclasses.dataclass
class Run:
    """A run directory as read back.

    Attributes:
        path: The directory.
        summary: ``summary.json``.
        curve: (rows, 4) array of :data:`CURVE_COLUMNS`.
    """

    path: Path
    summary: dict[str, Any]
    curve: np.ndarray

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def metric(self) -> float:
        return float(self.summary["metric"])


progress_listener: Callable[[int, float, float, float], None] | None = None
"""Called with every ``curve.csv`` row (env steps, wall time, metric, best metric) of this process's
runs (a study's worker prints its progress lines with it); ``None``: nothing."""


class RunWriter:
    """Writes one run directory as the run goes (see the module docstring).

    Args:
        run_dir: The directory (created; its parent may exist).
        method: The :class:`~diffenvs.baselines.method.Method`.
        request: The :class:`~diffenvs.baselines.method.Request`.
        resolved: The resolved configuration (``method.resolve(request)``).
        metric_name: The task's metric.
        exist_ok: Allow an existing directory (``diffenvs optimize --run-name``).
    """

    def __init__(self, run_dir: str | Path, *, method: Any, request: Any, resolved: dict[str, Any], metric_name: str,
                 exist_ok: bool = False):
        self.path = Path(run_dir)
        self.path.mkdir(parents=True, exist_ok=exist_ok)
        self.method, self.request, self.metric_name = method, request, metric_name
        write_yaml(self.path / "config.yaml", {"method": method.name, "kind": method.kind,
                                               "request": to_dict(request), "resolved": resolved})
        self.rows: list[tuple[int, float, float, float]] = []
        self._curve = open(self.path / "curve.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._curve_writer = csv.writer(self._curve)
        self._curve_writer.writerow(CURVE_COLUMNS)
        self._log = open(self.path / "log.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._log_writer: csv.DictWriter | None = None

    @property
    def best_metric(self) -> float:
        """The result so far (``-inf`` before the first row)."""
        return self.rows[-1][3] if self.rows else -math.inf

    def point(self, env_steps: int, wall_time: float, metric: float, *, best_metric: float | None = None) -> bool:
        """Append a row of ``curve.csv``; ``best_metric`` defaults to the running maximum of ``metric``
        (an optimizer passes the metric of its lowest-loss sequence). Returns whether the result improved."""
        before = self.best_metric
        if best_metric is None:
            best_metric = max(before, metric) if not math.isnan(metric) else before
        self.rows.append((int(env_steps), float(wall_time), float(metric), float(best_metric)))
        self._curve_writer.writerow([int(env_steps), f"{wall_time:.3f}", repr(float(metric)), repr(float(best_metric))])
        self._curve.flush()
        if progress_listener is not None:
            progress_listener(int(env_steps), float(wall_time), float(metric), float(best_metric))
        return best_metric > before

    def log(self, record: dict[str, Any]) -> None:
        """Append a row of ``log.csv`` (its columns are the first record's keys)."""
        if self._log_writer is None:
            self._log_writer = csv.DictWriter(self._log, fieldnames=list(record), extrasaction="ignore")
            self._log_writer.writeheader()
        self._log_writer.writerow(record)
        self._log.flush()

    def finish(self, status: str, *, artifact: str | None, stopped: str | None = None, **extra: Any) -> Run:
        """Close the files and write ``summary.json``; returns the run as :func:`read_run` would."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._curve.close()
        self._log.close()
        last = self.rows[-1] if self.rows else (0, 0.0, math.nan, math.nan)
        summary = {"schema": SCHEMA, "status": status, "method": self.method.name, "kind": self.method.kind,
                   "env_id": self.request.env_id, "seed": self.request.seed, "instance": self.request.instance,
                   "judged_on": list(self.request.judged_on), "metric_name": self.metric_name, "metric": last[3],
                   "final_metric": last[2], "env_steps": last[0], "wall_time": last[1], "evaluations": len(self.rows),
                   "artifact": artifact if artifact and (self.path / artifact).exists() else None, "stopped": stopped,
                   **extra}
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return Run(path=self.path, summary=summary, curve=np.array(self.rows, dtype=np.float64).reshape(-1, 4))


def read_run(run_dir: str | Path) -> Run:
    """A finished (or interrupted) run directory.

    Raises:
        FileNotFoundError: no ``summary.json``.
        ConfigError: an older layout (naming ``diffenvs upgrade-runs``).
    """
    path = Path(run_dir)
    summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    if summary.get("schema") != SCHEMA:
        raise ConfigError(f"{path} is a run of an older layout: convert it with `diffenvs upgrade-runs {path}`")
    return Run(path=path, summary=summary, curve=read_curve(path / "curve.csv"))


def read_curve(path: str | Path) -> np.ndarray:
    """``curve.csv`` as a (rows, 4) array."""
    rows = _read_csv(Path(path))
    return np.array([[float(row[column]) for column in CURVE_COLUMNS] for row in rows], dtype=np.float64).reshape(-1, 4)


_MARKERS = ("summary.json", "result.json", "history.csv", "evaluations.csv")
"""Files that make a directory a run directory (of this layout or an older one)."""


def find_runs(root: str | Path) -> list[Path]:
    """Run directories at or under ``root``, outermost only (a study's run on held-out instances holds one
    run directory per instance)."""
    root = Path(root)
    found = sorted({path.parent for marker in _MARKERS for path in root.rglob(marker)})
    return [path for path in found if not any(other != path and other in path.parents for other in found)]


def upgrade_run(run_dir: str | Path) -> bool:
    """Convert a run of an older layout in place (see the module docstring); ``False`` if it is current.

    Older layouts: ``diffenvs optimize`` (``history.csv``, summary with ``best_metric``),
    ``diffenvs train`` (``evaluations.csv``, summary with ``best_evaluation``), and either inside a
    study (``result.json`` and a three-column ``curve.csv``, the study's reading of the run). The
    figures are carried over unchanged: a study's report reads the same values before and after.

    Raises:
        ConfigError: a directory that is no run of a known layout.
    """
    path = Path(run_dir)
    old = json.loads((path / "summary.json").read_text(encoding="utf-8")) if (path / "summary.json").exists() else {}
    if old.get("schema") == SCHEMA:
        return False
    if not old and (path / "config.yaml").exists():  # a run whose summary was not kept: its configuration says
        from diffenvs.config import read_yaml

        old = {key: value for key, value in read_yaml(path / "config.yaml").items()
               if key in ("env_id", "algo", "method", "seed", "instance")}
    result = json.loads((path / "result.json").read_text(encoding="utf-8")) if (path / "result.json").exists() else {}
    job = json.loads((path / "job.json").read_text(encoding="utf-8")) if (path / "job.json").exists() else {}
    held_out = bool(job.get("test_seeds"))
    if (path / "history.csv").exists():  # an optimizer
        log_rows = _read_csv(path / "history.csv")
        rows = [(int(r["env_steps"]), float(r["wall_time"]), float(r["metric"]), float(r["best_metric"])) for r in log_rows]
        kind, method, source = "optimizer", old.get("method"), "history.csv"
        artifact = "best.npz"
    elif (path / "evaluations.csv").exists():  # a learner
        log_rows = _read_csv(path / "evaluations.csv")
        rows, best = [], -math.inf
        for r in log_rows:
            best = max(best, float(r["metric_mean"]))
            rows.append((int(r["env_steps"]), float(r["wall_time"]), float(r["metric_mean"]), best))
        kind, method, source = "learner", old.get("algo"), "evaluations.csv"
        artifact = "best_model.pt" if method in ("apg", "shac") else "best_model.zip"
    elif result and (path / "curve.csv").exists():  # a study's optimizer on held-out instances: its merged curve
        rows = [(int(r["env_steps"]), float(r["wall_time"]), float(r["metric"]), float(r["metric"]))
                for r in _read_csv(path / "curve.csv")]
        kind, method, source, artifact, log_rows = "optimizer", result.get("algorithm"), None, None, []
        for sub in sorted(path.glob("instance-*")):
            upgrade_run(sub)
    else:
        raise ConfigError(f"{path}: not a run directory of a known layout (no history.csv, evaluations.csv or result.json)")
    if source is not None:
        (path / source).rename(path / "log.csv")
    else:
        (path / "log.csv").write_text("", encoding="utf-8")
    with open(path / "curve.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CURVE_COLUMNS)
        writer.writerows([steps, f"{seconds:.3f}", repr(metric), repr(best)] for steps, seconds, metric, best in rows)
    last = rows[-1] if rows else (0, 0.0, math.nan, math.nan)
    spec = job.get("spec", {})
    seed = old.get("seed", result.get("seed", job.get("seed")))
    instance = None if held_out else seed
    if kind == "learner" and not job and (path / "config.yaml").exists():
        instance = _yaml_value(path / "config.yaml", "instance", seed)
    metric_name = old.get("metric_name") or (log_rows[0].get("metric_name") if log_rows else None) or _metric_name(
        old.get("env_id") or result.get("env_id") or job.get("env_id"))
    summary = {"schema": SCHEMA, "status": old.get("status", result.get("status", "finished")),
               "method": method or spec.get("method"), "kind": kind,
               "env_id": old.get("env_id") or result.get("env_id") or job.get("env_id"), "seed": seed,
               "instance": instance, "judged_on": list(job.get("test_seeds") or [seed]) if job else None,
               "metric_name": metric_name,
               # a study judged held-out policies by their last evaluation: its result.json keeps that value
               "metric": float(result["metric"]) if result and not held_out else last[3],
               # a study's result.json kept the exact figures (its curve.csv rounded the seconds)
               "final_metric": last[2], "env_steps": int(result.get("env_steps", last[0])),
               "wall_time": float(result.get("wall_time", last[1])), "evaluations": len(rows),
               "artifact": artifact if artifact and (path / artifact).exists() else None, "stopped": old.get("stopped"),
               "upgraded_from": source or "result.json"}
    for key in ("initial_loss", "best_loss", "horizon", "budget"):
        if key in old:
            summary[key] = old[key]
    (path / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (path / "result.json").unlink(missing_ok=True)
    return True


def _metric_name(env_id: str | None) -> str | None:
    from diffenvs.registration import metric_name

    return None if env_id is None else metric_name(env_id)


def _yaml_value(path: Path, key: str, default: Any) -> Any:
    from diffenvs.config import read_yaml

    return read_yaml(path).get(key, default)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


__all__ = ["CURVE_COLUMNS", "SCHEMA", "SUMMARY_KEYS", "Run", "RunWriter", "find_runs", "read_curve", "read_run", "upgrade_run"]
