"""Learners as registered methods, and the code behind ``diffenvs train``.

A learner (:class:`LearnerMethod`) trains a policy: the stable-baselines3 algorithms
(:class:`~diffenvs.baselines.rl.SB3Learner`: ``ppo``, ``sac``, ``td3``) step the native vector env
without gradients; APG and SHAC (:class:`~diffenvs.baselines.diffrl.DiffRLLearner`) train through
the differentiable one. Their hyperparameters live in ``configs/rl/<name>.yaml`` in rl-zoo3's format
(one section per env id; :func:`~diffenvs.baselines.rl.load_hyperparams`).

Everything else is shared and written once here: the run directory
(:mod:`diffenvs.baselines.rundir`), the evaluation schedule (at the start, whenever ``eval_every``
more env steps have been trained, at the end), the evaluation itself (the deterministic policy, one
episode per judged instance, the task metric ``info[task.metric]`` after the last step), and the
best policy so far (the highest mean metric, saved when it improves, as rl-zoo3 keeps its
``best_model``). A run trains on one instance (``instance``: every episode starts from it, and it
alone is evaluated) or on fresh random instances, evaluated on ``eval_seeds``.

A run writes, into ``<out_dir>/<Task>-<algo>-s<seed>-<time>/`` (or ``out_dir/run_name``), the run
directory's files (``log.csv``: per evaluation the return and metric on each instance, with their
means), the final policy (``model.zip``, with ``vecnormalize.pkl`` under ``normalize``; APG and
SHAC: ``model.pt``) saved at the end or on Ctrl-C, the best one (``best_model.zip`` and
``best_vecnormalize.pkl``; ``best_model.pt``: the artifact), and ``tensorboard/`` with
``tensorboard=True``.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from diffenvs.baselines.method import Method, Request, get_method, method_kind, method_names
from diffenvs.baselines.rundir import Run, RunWriter, read_run
from diffenvs.config import ConfigError
from diffenvs.registration import task_name


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What ``diffenvs train`` runs.

    Attributes:
        env_id: A registered diffenvs id.
        algo: A registered learner (``ppo``, ``sac``, ``td3``: stable-baselines3; ``apg``, ``shac``:
            through the simulator's gradients).
        steps: Env steps to train (all worlds together); ``None``: the section's ``n_timesteps``.
        seed: Seed of the algorithm and of the training instances.
        n_envs: Worlds of the training vector env; ``None``: the section's ``n_envs``.
        eval_every: Env steps between evaluations.
        eval_seeds: Reset seeds of the evaluation instances (deterministic policy, one episode each).
        instance: Train on one problem instance: every training episode starts from the instance of
            this reset seed (the env's ``instance_seed``), and the policy is evaluated on it alone
            (``eval_seeds`` ignored). ``None``: fresh random instances, evaluated on ``eval_seeds``.
        env_kwargs: Keyword arguments of the env (training and evaluation).
        hyperparams: Overrides of the section's values (rl-zoo3 keys).
        out_dir: Parent folder of run directories.
        run_name: Name of the run directory; ``None``: ``<Task>-<algo>-s<seed>-<time>``.
        tensorboard: Also log to ``<run>/tensorboard``.
        torch_device: Device of the networks (``cpu``; small MLPs gain nothing from a GPU).
    """

    env_id: str = "DiffEnvs/Pusher-v0"
    algo: str = "ppo"
    steps: int | None = None
    seed: int = 0
    n_envs: int | None = None
    eval_every: int = 10_000
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    instance: int | None = None
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    hyperparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    out_dir: str = "runs/train"
    run_name: str | None = None
    tensorboard: bool = False
    torch_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.algo not in method_names("learner"):
            raise ConfigError(f"algo must be one of {method_names('learner')}, got {self.algo!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.n_envs is not None and self.n_envs < 1:
            raise ConfigError(f"n_envs must be >= 1, got {self.n_envs}")
        if self.eval_every < 1 or not self.eval_seeds:
            raise ConfigError("eval_every must be >= 1 and eval_seeds not empty")
        for key in ("render_mode", "differentiable", "num_envs", "instance_seed"):
            if key in self.env_kwargs:
                raise ConfigError(f"env_kwargs may not set {key!r}: training chooses it")

    @property
    def judged_on(self) -> tuple[int, ...]:
        return self.eval_seeds if self.instance is None else (self.instance,)

    def request(self) -> Request:
        """The :class:`~diffenvs.baselines.method.Request` this configuration answers."""
        options = {**self.hyperparams, **({} if self.n_envs is None else {"n_envs": self.n_envs})}
        return Request(env_id=self.env_id, seed=self.seed, instance=self.instance,
                       eval_seeds=() if self.instance is not None else tuple(self.eval_seeds), budget=self.steps,
                       env_kwargs=dict(self.env_kwargs), options=options, eval_every=self.eval_every)


def evaluate_policy_on_instances(model: Any, env: Any, seeds: tuple[int, ...], env_kwargs: dict[str, Any] | None = None,
                                 normalizer: Any = None) -> dict[str, Any]:
    """Deterministic episodes from each instance (reset seed): returns and the task metric at the end.

    ``model`` has SB3's ``predict``; ``env`` is an env id (made with ``env_kwargs`` and closed again)
    or a single env to reuse.
    """
    import gymnasium as gym

    owned = isinstance(env, str)
    if owned:
        env = gym.make(env, differentiable=False, **(env_kwargs or {}))
    metric_name = env.unwrapped.task.metric
    returns, metrics = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done, info = 0.0, False, {}
        while not done:
            policy_obs = normalizer.normalize_obs(obs[None])[0] if normalizer is not None else obs
            action, _ = model.predict(policy_obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        metrics.append(float(info.get(metric_name, 0.0)))
    if owned:
        env.close()
    return {"metric_name": metric_name, "returns": returns, "metrics": metrics,
            "return_mean": float(np.mean(returns)), "metric_mean": float(np.mean(metrics))}


class Evaluator:
    """A training run's evaluations: when (the schedule), what (the deterministic policy on the
    judged instances), and where (``curve.csv``, ``log.csv``, the best policy via ``save_best``).

    Args:
        writer: The run's :class:`~diffenvs.baselines.rundir.RunWriter`.
        env: The single evaluation env (reused across evaluations).
        seeds: The judged instances.
        every: Env steps between evaluations.
        bar: The progress bar (tqdm).
    """

    def __init__(self, writer: RunWriter, env: Any, seeds: tuple[int, ...], every: int, bar: Any):
        self.writer, self.env, self.seeds, self.every, self.bar = writer, env, seeds, every, bar
        self.start = time.perf_counter()
        self.rows: list[dict[str, Any]] = []
        self.next_eval = 0  # the untrained policy first
        self.seen = 0

    def progress(self, env_steps: int) -> None:
        """Advance the progress bar to ``env_steps``."""
        self.bar.update(env_steps - self.seen)
        self.seen = env_steps

    def due(self, env_steps: int) -> bool:
        """Whether an evaluation is due at ``env_steps`` (then the next is ``every`` steps past the
        last scheduled point that ``env_steps`` reached: a long stride skips, it does not catch up)."""
        if env_steps < self.next_eval:
            return False
        while self.next_eval <= env_steps:
            self.next_eval += self.every
        return True

    def evaluate(self, policy: Any, env_steps: int, save_best: Any, normalizer: Any = None) -> None:
        """Evaluate ``policy`` (``predict`` as SB3's) now; ``save_best()`` when its mean metric is the best so far."""
        result = evaluate_policy_on_instances(policy, self.env, self.seeds, normalizer=normalizer)
        wall_time = time.perf_counter() - self.start
        self.rows.append({"env_steps": env_steps, "wall_time": wall_time, **result})
        if self.writer.point(env_steps, wall_time, result["metric_mean"]):  # the best so far: rl-zoo3's best_model
            save_best()
        self.writer.log({"env_steps": env_steps, "wall_time": f"{wall_time:.3f}", "return_mean": result["return_mean"],
                         "metric_mean": result["metric_mean"],
                         **{f"return_seed{s}": value for s, value in zip(self.seeds, result["returns"])},
                         **{f"metric_seed{s}": value for s, value in zip(self.seeds, result["metrics"])}})
        self.bar.set_postfix({result["metric_name"]: f"{result['metric_mean']:.3f}"})

    def maybe(self, policy: Any, env_steps: int, save_best: Any, normalizer: Any = None) -> None:
        """Evaluate if due (see :meth:`due`)."""
        self.progress(env_steps)
        if self.due(env_steps):
            self.evaluate(policy, env_steps, save_best, normalizer)

    def last(self, policy: Any, env_steps: int, save_best: Any, normalizer: Any = None) -> None:
        """The final evaluation, unless the last one was at ``env_steps`` already."""
        if not self.rows or self.rows[-1]["env_steps"] != env_steps:
            self.evaluate(policy, env_steps, save_best, normalizer)


class LearnerMethod(Method):
    """A learner as a registered method; subclasses implement :meth:`check`, :meth:`learn` and :meth:`load`.

    Attributes:
        artifact: File name of the best policy (the run's artifact).
    """

    kind = "learner"
    artifact: ClassVar[str]

    def section(self, request: Request, path: str | Path | None = None) -> dict[str, Any]:
        """The hyperparameter section of the request's env (``path``: an rl-zoo3 file instead of
        ``configs/rl/<name>.yaml``), with the request's options over it."""
        from diffenvs.baselines.rl import load_hyperparams

        return {**load_hyperparams(self.name, request.env_id, path, random_instances=request.instance is None),
                **request.options}

    @abc.abstractmethod
    def check(self, section: dict[str, Any], *, where: str) -> tuple[int, int]:
        """Validate a section (with its overrides) before anything is written; its ``n_timesteps``
        and ``n_envs``.

        Raises:
            ConfigError: an unknown or invalid key, naming it.
        """

    @abc.abstractmethod
    def learn(self, config: TrainConfig, section: dict[str, Any], steps: int, run_dir: Path,
              evaluator: Evaluator) -> tuple[str, int]:
        """Train for ``steps`` env steps, evaluating through ``evaluator`` (whose ``save_best`` writes
        :attr:`artifact`), and save the final policy; the status and the env steps trained.
        Ctrl-C returns status ``interrupted``."""

    def resolve(self, request: Request) -> dict[str, Any]:
        section = self.section(request)
        self.check(section, where=f"configs/rl/{self.name}.yaml [{request.env_id}]")
        return section

    def solve(self, request: Request, run_dir: str | Path, *, progress: bool = False) -> Run:
        run_dir = Path(run_dir)
        budget = request.budget
        options = dict(request.options)
        n_envs = options.pop("n_envs", None)
        config = TrainConfig(env_id=request.env_id, algo=self.name, steps=budget, seed=request.seed, n_envs=n_envs,
                             eval_every=request.eval_every or (max(1, budget // 20) if budget else 10_000),
                             instance=request.instance, eval_seeds=request.judged_on, env_kwargs=dict(request.env_kwargs),
                             hyperparams=options, out_dir=str(run_dir.parent), run_name=run_dir.name)
        return run_train(config, progress=progress, request=request).run

    def load_artifact(self, run_dir: str | Path) -> Path | None:
        """The path of the run's best policy, or ``None`` where it is absent."""
        artifact = read_run(run_dir).summary["artifact"]
        return None if artifact is None or not (Path(run_dir) / artifact).exists() else Path(run_dir) / artifact


@dataclasses.dataclass
class TrainResult:
    """A finished or interrupted training run."""

    run_dir: Path
    status: str
    env_steps: int
    evaluations: list[dict[str, Any]]
    run: Run


def run_train(config: TrainConfig, *, progress: bool = True, hyperparams_path: str | Path | None = None,
              request: Request | None = None) -> TrainResult:
    """Train ``config.algo`` on ``config.env_id`` into a run directory (see the module docstring).

    Checks everything (the env id, the optional install, the hyperparameters) before it writes
    anything. Ctrl-C (``KeyboardInterrupt``) stops training, saves the model and the summary, and
    returns with status ``interrupted``.

    Raises:
        ConfigError: an unknown env id or hyperparameter, a learner whose optional install is missing.
    """
    import gymnasium as gym
    from tqdm.auto import tqdm

    import diffenvs  # noqa: F401  (registers the ids)

    if config.env_id not in gym.registry:
        raise ConfigError(f"unknown env id {config.env_id!r}; see `diffenvs list`")
    if method_kind(config.algo) != "learner":
        raise ConfigError(f"{config.algo!r} is not a learner")
    method: LearnerMethod = get_method(config.algo)  # type: ignore[assignment]
    request = request or config.request()
    where = f"{hyperparams_path or f'configs/rl/{config.algo}.yaml'} [{config.env_id}]"
    section = method.section(request, hyperparams_path)
    default_steps, n_envs = method.check(section, where=where)
    steps = int(config.steps or default_steps)
    if steps < 1:
        raise ConfigError(f"{where}: no n_timesteps and no --steps")
    name = config.run_name or f"{task_name(config.env_id)}-{config.algo}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.out_dir) / name
    # one evaluation env for the whole run (with instance: its one instance is drawn once)
    eval_env = gym.make(config.env_id, differentiable=False, instance_seed=config.instance, **config.env_kwargs)
    writer = RunWriter(run_dir, method=method, request=request, metric_name=eval_env.unwrapped.task.metric,
                       resolved={"steps": steps, "n_envs": n_envs, **section})
    bar = tqdm(total=steps, disable=not progress, unit="step", desc=f"{config.algo} {config.env_id}")
    evaluator = Evaluator(writer, eval_env, config.judged_on, config.eval_every, bar)
    status, env_steps = "interrupted", 0
    try:
        status, env_steps = method.learn(config, {**section, "n_envs": n_envs}, steps, run_dir, evaluator)
    finally:
        bar.close()
        eval_env.close()
        run = writer.finish(status, artifact=method.artifact)
    return TrainResult(run_dir=run_dir, status=status, env_steps=env_steps, evaluations=evaluator.rows, run=run)


__all__ = ["Evaluator", "LearnerMethod", "TrainConfig", "TrainResult", "evaluate_policy_on_instances", "run_train"]
