"""Closed-loop robustness: a study's results replayed under actuation noise.

An optimizer's result is an open-loop action sequence; an RL algorithm's (or APG's, SHAC's) is a
policy that sees every observation. On its own instance without noise both are judged by one
deterministic episode (the study's table). Here every finished run of an ``instance``-protocol
study is replayed ``episodes`` times on its instance with Gaussian noise of standard deviation
``noise`` added to every executed action (then clipped to [-1, 1] by the env, as any action):
the sequence cannot react to it, a policy can. All methods see the same noise draws (common random
numbers: the draws depend only on the instance, the episode and the step), so differences between
methods are not differences in luck.

Reads each run's result through its method (:meth:`~diffenvs.baselines.method.Method.load`: the
best sequence of an optimizer, the best policy of a learner; the model files are kept in the study
directory but not committed, so this runs where the study ran). Writes ``robustness.csv`` (one row per run and noise
level: mean and standard deviation of the metric over the episodes; a later call replays the runs
whose artifact it finds, for the chosen methods and envs, and keeps every other row, so a run
replayed on another machine keeps its rows, unless the run was redone since: rows whose noiseless
replay differs from the run's current result are dropped; a finished run with neither an artifact
nor rows at every level is listed as missing) and ``robustness.md`` (per task: each method's interquartile mean over instances
at every noise level, with its 95% bootstrap interval, and the fraction of its noiseless result
that it keeps at the largest level).

The noiseless replay must reproduce the study's result: a mismatch (beyond 1e-6) raises, since the
replay would then not measure what the study measured.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from diffenvs.baselines.method import Policy, get_method
from diffenvs.baselines.rundir import read_run
from diffenvs.config import ConfigError


def noise_draws(instance: int, episodes: int, steps: int, action_dim: int) -> np.ndarray:
    """Standard normal draws (steps, episodes, action_dim) of one instance, the same for every method."""
    return np.random.default_rng([20261130, instance]).standard_normal((steps, episodes, action_dim))


def replay(env_id: str, instance: int, env_kwargs: dict[str, Any], policy: Policy, noise: float,
           episodes: int) -> np.ndarray:
    """Task metric of ``episodes`` noisy episodes on ``instance`` (worlds of one vector env)."""
    import gymnasium as gym

    import diffenvs  # noqa: F401  (registers the ids)

    count = 1 if noise == 0 else episodes
    env = gym.make_vec(env_id, num_envs=count, vectorization_mode="vector_entry_point", differentiable=False,
                       instance_seed=instance, **env_kwargs)
    try:
        steps = env_kwargs.get("max_episode_steps") or gym.spec(env_id).max_episode_steps
        metric_name = env.unwrapped.task.metric
        draws = noise_draws(instance, episodes, steps, env.single_action_space.shape[0])[:, :count]
        policy.reset()
        obs, _ = env.reset(seed=instance)
        metric = np.full(count, np.nan)
        done = np.zeros(count, dtype=bool)
        for t in range(steps):
            action = policy(obs) + noise * draws[t]
            obs, _, terminated, truncated, info = env.step(action)
            ended = (terminated | truncated) & ~done
            metric[ended] = np.asarray(info[metric_name])[ended]
            done |= ended
            if done.all():
                break
    finally:
        env.close()
    return metric


def run_robustness(config: Any, *, noise: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4), episodes: int = 16,
                   methods: tuple[str, ...] | None = None, envs: tuple[str, ...] | None = None,
                   seeds: tuple[int, ...] | None = None, progress: bool = True) -> tuple[Path, Path]:
    """Replay every finished run of ``config`` (a :class:`~diffenvs.baselines.study.StudyConfig`)
    under each ``noise`` level; write and return ``robustness.csv`` and ``robustness.md``.
    ``methods``, ``envs`` and ``seeds`` replay only those runs (the other rows are kept).

    Raises:
        ConfigError: a ``generalize`` study, bad levels or episodes, unknown methods, envs or seeds.
        RuntimeError: a noiseless replay that does not reproduce the study's result.
    """
    import warp as wp
    from tqdm import tqdm

    from diffenvs.baselines.study import jobs, select

    wp.config.quiet = True  # no module-load lines (as the study's workers)
    wp.config.log_level = 30

    if config.protocol != "instance":
        raise ConfigError("robustness replays single-instance results: the study's protocol must be 'instance'")
    if config.train_seeds:  # its rows are keyed by (env, method, instance)
        raise ConfigError("robustness replays one run per instance: a study with train_seeds is not supported")
    if episodes < 1 or not noise or any(not (0 <= level < math.inf) for level in noise):
        raise ConfigError(f"need episodes >= 1 and noise levels >= 0, got {episodes} and {list(noise)}")
    todo = select(config, methods=methods, envs=envs, seeds=seeds)
    out = Path(config.out_dir)
    csv_path = out / "robustness.csv"
    levels = sorted(set(noise) | {0.0})
    earlier = []
    if csv_path.exists():  # rows of earlier calls, kept where measured the same way and not replayed now
        with open(csv_path, encoding="utf-8") as handle:
            earlier = [{**row, "seed": int(row["seed"]), "noise": float(row["noise"]), "episodes": int(row["episodes"]),
                        "metric_mean": float(row["metric_mean"]), "metric_std": float(row["metric_std"])}
                       for row in csv.DictReader(handle)]
        earlier = [row for row in earlier if row["noise"] in levels and row["episodes"] in (1, episodes)
                   and row["method"] in config.methods]
    results = {}  # (env_id, method, seed) -> the finished run's metric
    for job in jobs(config):
        path = out / "runs" / job.name
        if (path / "job.json").exists():
            results[_key(job)] = read_run(path).metric
    # earlier rows count only for a run still finished with the result they were replayed from: a rerun
    # (new values after a tuning, a new model) drops its predecessor's rows
    current = {_key(row) for row in earlier
               if row["noise"] == 0 and _key(row) in results and abs(row["metric_mean"] - results[_key(row)]) <= 1e-6}
    earlier = [row for row in earlier if _key(row) in current]
    rows, replaced = [], set()
    for job in tqdm(todo, desc="robustness", disable=not progress):
        run_dir = out / "runs" / job.name
        if _key(job) not in results:  # not finished (or removed): no rows
            continue
        policy = get_method(job.spec.method).load(run_dir)
        if policy is None:  # keep its earlier rows (model files are not committed)
            continue
        replaced.add(_key(job))
        for level in levels:
            metrics = replay(job.env_id, job.seed, job.env_kwargs, policy, level, episodes)
            if level == 0 and abs(float(metrics[0]) - results[_key(job)]) > 1e-6:
                raise RuntimeError(f"{job.name}: the noiseless replay gives {metrics[0]:.6f}, the study "
                                   f"{results[_key(job)]:.6f}: the artifact does not match the result")
            rows.append({"env_id": job.env_id, "method": job.label, "seed": job.seed, "noise": level,
                         "episodes": len(metrics), "metric_mean": float(np.mean(metrics)),
                         "metric_std": float(np.std(metrics))})
    rows = [row for row in earlier if _key(row) not in replaced] + rows
    have: dict[tuple[str, str, int], set[float]] = {}
    for row in rows:
        have.setdefault(_key(row), set()).add(row["noise"])
    missing = [job.name for job in jobs(config) if _key(job) in results and not set(levels) <= have.get(_key(job), set())]
    order = {(job.env_id, job.label): index for index, job in enumerate(jobs(config))}
    rows.sort(key=lambda row: (order[(row["env_id"], row["method"])], row["seed"], row["noise"]))
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["env_id", "method", "seed", "noise", "episodes", "metric_mean",
                                                    "metric_std"])
        writer.writeheader()
        writer.writerows(rows)
    md_path = out / "robustness.md"
    md_path.write_text(_table(config, rows, levels, episodes, missing), encoding="utf-8")
    return csv_path, md_path


def _key(run: Any) -> tuple[str, str, int]:
    """(env id, method label, seed) of a :class:`~diffenvs.baselines.study.RunJob` or a row."""
    if isinstance(run, dict):
        return run["env_id"], run["method"], run["seed"]
    return run.env_id, run.label, run.seed


def _table(config: Any, rows: list[dict[str, Any]], levels: list[float], episodes: int, missing: list[str]) -> str:
    from diffenvs.baselines.report import MIN_FOR_INTERVAL, cell
    from diffenvs.registration import task_name

    lines = [f"# Robustness: {config.name}", "",
             (f"Task metric under Gaussian actuation noise (standard deviation per action component, actions in "
              f"[-1, 1]), {episodes} episodes per instance with the same noise draws for every method; "
              f"interquartile mean over instances with its 95% bootstrap interval (from {MIN_FOR_INTERVAL} instances "
              "on; with fewer, the values themselves). `kept`: the "
              "interquartile mean at the largest level over the noiseless one."), ""]
    for env_id in config.envs:
        lines += [f"## {task_name(env_id)}", "",
                  "| method | " + " | ".join(f"noise {level:g}" for level in levels) + " | kept |",
                  "|---|" + "---|" * (len(levels) + 1)]
        for method in config.methods:
            cells, iqms = [], []
            for level in levels:
                values = [r["metric_mean"] for r in rows
                          if r["env_id"] == env_id and r["method"] == method and r["noise"] == level]
                if not values:
                    cells.append("-")
                    iqms.append(math.nan)
                    continue
                result = cell({index: [value] for index, value in enumerate(values)}, reps=config.bootstrap_reps)
                expected = len(config.instances(env_id))
                cells.append(result.text(2) + ("" if len(values) >= expected else f" ({len(values)} of {expected})"))
                iqms.append(result.iqm)
            if all(cell == "-" for cell in cells):
                continue
            kept = iqms[-1] / iqms[0] if iqms[0] and not math.isnan(iqms[0]) and not math.isnan(iqms[-1]) else math.nan
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {kept:.2f} |")
        lines.append("")
    if missing:
        lines += ["Finished runs lacking rows at some level (not replayed by this call's --methods/--envs, or "
                  "without an artifact here: model files are not committed, replay where the study ran): "
                  + ", ".join(missing), ""]
    return "\n".join(lines)


__all__ = ["noise_draws", "replay", "run_robustness"]
