"""RL baselines with stable-baselines3, and policies trained through the simulator: the code behind ``diffenvs train``.

Hyperparameters live in ``configs/rl/<algo>.yaml`` in rl-zoo3's format (one section per env id:
``n_envs``, ``n_timesteps``, ``policy``, optional ``normalize`` and ``policy_kwargs`` as rl-zoo3
writes them, e.g. ``"dict(net_arch=[64, 64])"``, and the algorithm's own keyword arguments;
``lin_<value>`` for a linearly decaying rate). Training steps the native vector env through
:class:`~diffenvs.baselines.sb3.SB3VecEnv` (one Warp launch for all worlds, ``differentiable=False``)
on fresh random instances every episode, or on one instance (``instance``: every episode starts
from the instance of that reset seed, the protocol of the RL-versus-gradient comparison).
``apg`` and ``shac`` (:mod:`diffenvs.baselines.diffrl`) train through the differentiable vector
env instead; their sections in ``configs/rl/apg.yaml`` and ``shac.yaml`` hold the fields of
:class:`~diffenvs.baselines.diffrl.DiffRLConfig`, and their env steps count forward and backward.
Their ``random_instances`` values replace a section's own when training on random instances
(:func:`load_hyperparams`).

A run writes, into ``<out_dir>/<Task>-<algo>-s<seed>-<time>/`` (or ``out_dir/run_name``):

- ``config.yaml``: the resolved configuration and hyperparameters;
- ``evaluations.csv``: one row per evaluation (at the start, every ``eval_every`` env steps and at
  the end), appended and flushed as it happens: env steps, wall time, and the deterministic
  policy's return and task metric (the env's ``info[task.metric]`` after the last step) on each
  evaluation instance (``eval_seeds``: the reset seeds of the problem instances, as in
  ``diffenvs optimize``), with their mean;
- ``model.zip`` (and ``vecnormalize.pkl`` with ``normalize``): the policy, saved at the end or on
  Ctrl-C; ``best_model.zip`` (and ``best_vecnormalize.pkl``): the policy of the best evaluation so
  far (highest mean metric), saved when it improves, as rl-zoo3 keeps its best model
  (``apg``/``shac``: ``model.pt`` and ``best_model.pt``, the networks' state dicts);
- ``summary.json``: status (``finished`` or ``interrupted``), env steps, wall time, the last
  and the best evaluation; ``tensorboard/`` with ``tensorboard=True``.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import time
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diffenvs.config import ConfigError, read_yaml, to_dict, write_yaml

Algo = Literal["ppo", "sac", "td3", "apg", "shac"]
SB3_ALGOS: tuple[str, ...] = ("ppo", "sac", "td3")
"""The stable-baselines3 algorithms (rl-zoo3's hyperparameter format)."""
ALGOS: tuple[str, ...] = typing.get_args(Algo)
"""Every algorithm of ``diffenvs train``: stable-baselines3's and the ones through the simulator (:mod:`.diffrl`)."""
SPECIAL_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "policy_kwargs", "noise_type", "noise_std")
"""Keys of an rl-zoo3 section that are not the algorithm's keyword arguments."""


def sb3_class(algo: str) -> Any:
    """The stable-baselines3 class of ``algo`` (one of :data:`SB3_ALGOS`)."""
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "sac": sb3.SAC, "td3": sb3.TD3}[algo]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What ``diffenvs train`` runs.

    Attributes:
        env_id: A registered diffenvs id.
        algo: ``ppo``, ``sac`` or ``td3`` (stable-baselines3), or ``apg`` or ``shac`` (through the
            simulator's gradients, :mod:`diffenvs.baselines.diffrl`).
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
    algo: Algo = "ppo"
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
        if self.algo not in ALGOS:
            raise ConfigError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.n_envs is not None and self.n_envs < 1:
            raise ConfigError(f"n_envs must be >= 1, got {self.n_envs}")
        if self.eval_every < 1 or not self.eval_seeds:
            raise ConfigError("eval_every must be >= 1 and eval_seeds not empty")
        for key in ("render_mode", "differentiable", "num_envs", "instance_seed"):
            if key in self.env_kwargs:
                raise ConfigError(f"env_kwargs may not set {key!r}: training chooses it")


def load_hyperparams(algo: str, env_id: str, path: str | Path | None = None, *,
                     random_instances: bool = False) -> dict[str, Any]:
    """The rl-zoo3 section of ``env_id`` in ``configs/rl/<algo>.yaml`` (or ``path``).

    A section may hold ``random_instances``: values that replace the section's own when training on
    fresh random instances (``random_instances=True``: ``diffenvs train`` without ``--instance``, a
    study's ``generalize`` protocol) instead of one instance, e.g. a longer budget or a contact term
    kept to the end (replaced key by key: a ``remedies_final`` there is the whole new value). Only
    the sections of ``apg`` and ``shac`` use it: rl-zoo3 would pass it to an SB3 algorithm.

    Raises:
        ConfigError: no such algorithm, file or section, or a ``random_instances`` that is not a mapping.
    """
    if algo not in ALGOS:
        raise ConfigError(f"algo must be one of {ALGOS}, got {algo!r}")
    if path is None:
        from diffenvs.configs import CONFIG_DIR

        path = CONFIG_DIR / "rl" / f"{algo}.yaml"
    sections = read_yaml(path)
    if env_id not in sections:
        raise ConfigError(f"{path}: no section for {env_id!r} (sections: {sorted(sections)})")
    section = dict(sections[env_id])
    overrides = section.pop("random_instances", None) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path} [{env_id}]: random_instances must be a mapping of keys to values, got {overrides!r}")
    return {**section, **overrides} if random_instances else section


def parse_call_dict(text: str, *, where: str) -> dict[str, Any]:
    """rl-zoo3's ``"dict(key=value, ...)"`` strings (literal values only), without ``eval``.

    Raises:
        ConfigError: anything but a ``dict(...)`` call of literals.
    """
    try:
        node = ast.parse(text, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args):
            raise ValueError("not a dict(...) call")
        return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except (SyntaxError, ValueError) as error:
        raise ConfigError(f"{where}: expected dict(key=literal, ...), got {text!r} ({error})") from None


def _schedule(value: Any) -> Any:
    """rl-zoo3's ``lin_<x>``: a rate falling linearly from x to 0 over training."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def algo_kwargs(section: dict[str, Any], *, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an rl-zoo3 section into the algorithm's keyword arguments and the special keys."""
    special = {key: section[key] for key in SPECIAL_KEYS if key in section}
    kwargs = {key: _schedule(value) for key, value in section.items() if key not in SPECIAL_KEYS}
    if isinstance(special.get("policy_kwargs"), str):
        special["policy_kwargs"] = parse_call_dict(special["policy_kwargs"], where=f"{where}: policy_kwargs")
    if isinstance(special.get("normalize"), str):
        special["normalize"] = parse_call_dict(special["normalize"], where=f"{where}: normalize")
    if special.get("noise_type") not in (None, "normal"):
        raise ConfigError(f"{where}: noise_type must be 'normal', got {special['noise_type']!r}")
    return kwargs, special


def evaluate_policy_on_instances(model: Any, env: Any, seeds: tuple[int, ...], env_kwargs: dict[str, Any] | None = None,
                                 normalizer: Any = None) -> dict[str, Any]:
    """Deterministic episodes from each instance (reset seed): returns and the task metric at the end.

    ``env`` is an env id (made with ``env_kwargs`` and closed again) or a single env to reuse.
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


@dataclasses.dataclass
class TrainResult:
    """A finished or interrupted training run."""

    run_dir: Path
    status: str
    env_steps: int
    evaluations: list[dict[str, Any]]


class _EvaluationLog:
    """``evaluations.csv``, the best policy so far and the progress bar of a training run."""

    def __init__(self, run_dir: Path, env: Any, seeds: tuple[int, ...], bar: Any):
        self.run_dir, self.env, self.seeds, self.bar = run_dir, env, seeds, bar
        self.start = time.perf_counter()
        self.rows: list[dict[str, Any]] = []
        self.best = -np.inf
        self.handle = open(run_dir / "evaluations.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.writer = csv.writer(self.handle)
        header = ["env_steps", "wall_time", "return_mean", "metric_mean"]
        self.writer.writerow(header + [f"{kind}_seed{s}" for kind in ("return", "metric") for s in seeds])

    def evaluate(self, policy: Any, env_steps: int, save_best: Any, normalizer: Any = None) -> None:
        """Evaluate ``policy`` (``predict`` as SB3's) on the seeds; ``save_best()`` when its mean metric is the best so far."""
        result = evaluate_policy_on_instances(policy, self.env, self.seeds, normalizer=normalizer)
        row = {"env_steps": env_steps, "wall_time": time.perf_counter() - self.start, **result}
        self.rows.append(row)
        if result["metric_mean"] > self.best:  # rl-zoo3's best_model: the policy a study is judged by
            self.best = result["metric_mean"]
            save_best()
        self.writer.writerow([env_steps, f"{row['wall_time']:.3f}", result["return_mean"], result["metric_mean"],
                              *result["returns"], *result["metrics"]])
        self.handle.flush()
        self.bar.set_postfix({result["metric_name"]: f"{result['metric_mean']:.3f}"})

    def close(self) -> None:
        self.handle.close()


def run_train(config: TrainConfig, *, progress: bool = True, hyperparams_path: str | Path | None = None) -> TrainResult:
    """Train ``config.algo`` on ``config.env_id`` into a run directory (see the module docstring).

    Ctrl-C (``KeyboardInterrupt``) stops training, saves the model and the summary, and returns
    with status ``interrupted``.
    """
    import gymnasium as gym
    from tqdm.auto import tqdm

    import diffenvs  # noqa: F401  (registers the ids)
    from diffenvs.baselines.diffrl import DIFF_ALGOS, diffrl_config

    if config.env_id not in gym.registry:
        raise ConfigError(f"unknown env id {config.env_id!r}; see `diffenvs list`")
    where = f"configs/rl/{config.algo}.yaml [{config.env_id}]"
    section = {**load_hyperparams(config.algo, config.env_id, hyperparams_path, random_instances=config.instance is None),
               **config.hyperparams}
    if config.algo in DIFF_ALGOS:
        diff = diffrl_config(section, {} if config.n_envs is None else {"n_envs": config.n_envs}, where=where)
        steps, n_envs = int(config.steps or diff.n_timesteps), diff.n_envs
    else:
        kwargs, special = algo_kwargs(section, where=where)
        steps = int(config.steps or float(special.get("n_timesteps", 0)))
        n_envs = int(config.n_envs or special.get("n_envs", 1))
    if steps < 1:
        raise ConfigError(f"{where}: no n_timesteps and no --steps")
    name = config.run_name or f"{config.env_id.split('/')[-1].removesuffix('-v0')}-{config.algo}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.out_dir) / name
    run_dir.mkdir(parents=True, exist_ok=False)
    write_yaml(run_dir / "config.yaml", {**to_dict(config), "resolved": {"steps": steps, "n_envs": n_envs, **section}})

    eval_seeds = config.eval_seeds if config.instance is None else (config.instance,)
    # one evaluation env for the whole run (with instance: its one instance is drawn once)
    eval_env = gym.make(config.env_id, differentiable=False, instance_seed=config.instance, **config.env_kwargs)
    bar = tqdm(total=steps, disable=not progress, unit="step", desc=f"{config.algo} {config.env_id}")
    log = _EvaluationLog(run_dir, eval_env, eval_seeds, bar)
    try:
        if config.algo in DIFF_ALGOS:
            status, env_steps = _learn_through_sim(config, diff, steps, run_dir, log)
        else:
            status, env_steps = _learn_sb3(config, kwargs, special, steps, n_envs, run_dir, log)
    finally:
        bar.close()
        log.close()
        eval_env.close()
    summary = {"status": status, "env_id": config.env_id, "algo": config.algo, "seed": config.seed,
               "env_steps": env_steps, "wall_time": time.perf_counter() - log.start,
               "last_evaluation": log.rows[-1],
               "best_evaluation": max(log.rows, key=lambda row: row["metric_mean"])}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return TrainResult(run_dir=run_dir, status=status, env_steps=env_steps, evaluations=log.rows)


def _learn_sb3(config: TrainConfig, kwargs: dict[str, Any], special: dict[str, Any], steps: int, n_envs: int,
               run_dir: Path, log: _EvaluationLog) -> tuple[str, int]:
    import gymnasium as gym
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    from diffenvs.baselines.sb3 import SB3VecEnv

    torch.set_num_threads(1)  # small networks: threads cost more than they give on a 2-core CPU
    venv = VecMonitor(SB3VecEnv(gym.make_vec(config.env_id, num_envs=n_envs, vectorization_mode="vector_entry_point",
                                             differentiable=False, instance_seed=config.instance, **config.env_kwargs)))
    venv.seed(config.seed)
    normalize = special.get("normalize", False)
    if normalize:
        venv = VecNormalize(venv, **(normalize if isinstance(normalize, dict) else {}))
    if special.get("noise_type") == "normal":  # rl-zoo3's exploration noise for off-policy algorithms
        dim = venv.action_space.shape[0]
        kwargs["action_noise"] = NormalActionNoise(np.zeros(dim), float(special.get("noise_std", 0.1)) * np.ones(dim))
    algo_class = sb3_class(config.algo)
    model = algo_class(special.get("policy", "MlpPolicy"), venv, seed=config.seed, device=config.torch_device, verbose=0,
                       policy_kwargs=special.get("policy_kwargs"),
                       tensorboard_log=str(run_dir / "tensorboard") if config.tensorboard else None, **kwargs)
    if not config.tensorboard:  # SB3's default logger would leave an empty SB3-<date> folder in the temp dir
        from stable_baselines3.common.logger import configure

        model.set_logger(configure(str(run_dir), format_strings=[]))
    normalizer = venv if isinstance(venv, VecNormalize) else None

    def save_best() -> None:
        model.save(run_dir / "best_model.zip")
        if normalizer is not None:
            normalizer.save(str(run_dir / "best_vecnormalize.pkl"))

    def evaluate(env_steps: int) -> None:
        log.evaluate(model, env_steps, save_best, normalizer)

    class Evaluations(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next_eval = config.eval_every
            self.seen = 0

        def _on_step(self) -> bool:
            log.bar.update(self.num_timesteps - self.seen)
            self.seen = self.num_timesteps
            if self.num_timesteps >= self.next_eval:
                evaluate(self.num_timesteps)
                self.next_eval += config.eval_every
            return True

    evaluate(0)
    status = "finished"
    try:
        model.learn(total_timesteps=steps, callback=Evaluations())
    except KeyboardInterrupt:
        status = "interrupted"
    if status == "finished" and log.rows[-1]["env_steps"] != model.num_timesteps:
        evaluate(model.num_timesteps)
    model.save(run_dir / "model.zip")
    if normalizer is not None:
        normalizer.save(str(run_dir / "vecnormalize.pkl"))
    venv.close()
    return status, int(model.num_timesteps)


def _learn_through_sim(config: TrainConfig, diff: Any, steps: int, run_dir: Path, log: _EvaluationLog) -> tuple[str, int]:
    import torch

    from diffenvs.baselines.diffrl import train

    latest: dict[str, Any] = {"agent": None, "env_steps": 0, "next_eval": config.eval_every}

    def on_window(agent: Any, env_steps: int, stats: dict[str, float]) -> None:
        latest["agent"] = agent
        log.bar.update(env_steps - latest["env_steps"])
        latest["env_steps"] = env_steps
        if env_steps == 0 or env_steps >= latest["next_eval"]:
            log.evaluate(agent, env_steps, lambda: torch.save(agent.state_dict(), run_dir / "best_model.pt"))
            while latest["next_eval"] <= env_steps:
                latest["next_eval"] += config.eval_every

    status = "finished"
    try:
        train(config.algo, config.env_id, diff, steps=steps, seed=config.seed, instance=config.instance,
              env_kwargs=config.env_kwargs, on_window=on_window)
    except KeyboardInterrupt:
        status = "interrupted"
    agent = latest["agent"]
    if agent is not None:
        if status == "finished" and log.rows[-1]["env_steps"] != latest["env_steps"]:
            log.evaluate(agent, latest["env_steps"], lambda: torch.save(agent.state_dict(), run_dir / "best_model.pt"))
        torch.save(agent.state_dict(), run_dir / "model.pt")
    return status, int(latest["env_steps"])
