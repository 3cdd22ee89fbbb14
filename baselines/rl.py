"""stable-baselines3's algorithms as learners, with rl-zoo3's hyperparameter files.

Hyperparameters live in ``configs/rl/<algo>.yaml`` in rl-zoo3's format (one section per env id:
``n_envs``, ``n_timesteps``, ``policy``, optional ``normalize`` and ``policy_kwargs`` as rl-zoo3
writes them, e.g. ``"dict(net_arch=[64, 64])"``, and the algorithm's own keyword arguments;
``lin_<value>`` for a linearly decaying rate); rl-zoo3's own ``train`` reads them as they stand.
Values that replace a section's when training on random instances instead of one live apart, in
``configs/rl/random_instances.yaml`` (:func:`load_hyperparams`). Training steps the native vector
env through :class:`~diffenvs.baselines.sb3.SB3VecEnv` (one Warp launch for all worlds,
``differentiable=False``); the run, its evaluations and its files are
:mod:`diffenvs.baselines.learner`'s.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from diffenvs.baselines.learner import Evaluator, LearnerMethod, TrainConfig
from diffenvs.baselines.method import ModelPolicy, method_names
from diffenvs.config import ConfigError, read_yaml

_CLASSES = {"ppo": "PPO", "sac": "SAC", "td3": "TD3"}
SB3_ALGOS: tuple[str, ...] = tuple(_CLASSES)
"""The stable-baselines3 algorithms (each registered as a learner in :mod:`diffenvs.baselines.method`)."""
SPECIAL_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "policy_kwargs", "noise_type", "noise_std")
"""Keys of an rl-zoo3 section that are not the algorithm's keyword arguments."""


def sb3_class(algo: str) -> Any:
    """The stable-baselines3 class of ``algo`` (one of :data:`SB3_ALGOS`)."""
    import stable_baselines3 as sb3

    return getattr(sb3, _CLASSES[algo])


def load_hyperparams(algo: str, env_id: str, path: str | Path | None = None, *,
                     random_instances: bool = False) -> dict[str, Any]:
    """The rl-zoo3 section of ``env_id`` in ``configs/rl/<algo>.yaml`` (or ``path``).

    With ``random_instances`` (training on fresh random instances instead of one: ``diffenvs train``
    without ``--instance``, a study's ``generalize`` protocol), the packaged
    ``configs/rl/random_instances.yaml``'s values for the algorithm and env replace the section's,
    key by key (e.g. a longer budget, a contact term kept to the end; a ``remedies_final`` there is
    the whole new value). A ``path`` of one's own gets none of them.

    Raises:
        ConfigError: no such learner, file or section, or a malformed ``random_instances.yaml``.
    """
    from diffenvs.configs import CONFIG_DIR

    if algo not in method_names("learner"):
        raise ConfigError(f"algo must be one of {method_names('learner')}, got {algo!r}")
    own = path is not None
    path = CONFIG_DIR / "rl" / f"{algo}.yaml" if path is None else path
    sections = read_yaml(path)
    if env_id not in sections:
        raise ConfigError(f"{path}: no section for {env_id!r} (sections: {sorted(sections)})")
    section = dict(sections[env_id])
    if not random_instances or own:
        return section
    extra = CONFIG_DIR / "rl" / "random_instances.yaml"
    overrides = (read_yaml(extra).get(algo) or {}).get(env_id) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{extra} [{algo}][{env_id}]: expected a mapping of keys to values, got {overrides!r}")
    return {**section, **overrides}


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


class SB3Learner(LearnerMethod):
    """A stable-baselines3 algorithm (``ppo``, ``sac``, ``td3``) as a registered learner."""

    artifact = "best_model.zip"

    def check(self, section: dict[str, Any], *, where: str) -> tuple[int, int]:
        kwargs, special = algo_kwargs(dict(section), where=where)
        valid = set(inspect.signature(sb3_class(self.name).__init__).parameters) - {"self", "env", "policy"}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ConfigError(f"{where}: unknown {self.name} hyperparameter(s) {unknown}")
        return int(float(special.get("n_timesteps", 0))), int(special.get("n_envs", 1))

    def learn(self, config: TrainConfig, section: dict[str, Any], steps: int, run_dir: Path,
              evaluator: Evaluator) -> tuple[str, int]:
        import gymnasium as gym
        import torch
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.noise import NormalActionNoise
        from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

        from diffenvs.baselines.sb3 import SB3VecEnv

        kwargs, special = algo_kwargs(dict(section), where=self.name)
        torch.set_num_threads(1)  # small networks: threads cost more than they give on a 2-core CPU
        venv = VecMonitor(SB3VecEnv(gym.make_vec(config.env_id, num_envs=int(special["n_envs"]),
                                                 vectorization_mode="vector_entry_point", differentiable=False,
                                                 instance_seed=config.instance, **config.env_kwargs)))
        venv.seed(config.seed)
        normalize = special.get("normalize", False)
        if normalize:
            venv = VecNormalize(venv, **(normalize if isinstance(normalize, dict) else {}))
        if special.get("noise_type") == "normal":  # rl-zoo3's exploration noise for off-policy algorithms
            dim = venv.action_space.shape[0]
            kwargs["action_noise"] = NormalActionNoise(np.zeros(dim), float(special.get("noise_std", 0.1)) * np.ones(dim))
        model = sb3_class(self.name)(special.get("policy", "MlpPolicy"), venv, seed=config.seed, device=config.torch_device,
                                     verbose=0, policy_kwargs=special.get("policy_kwargs"),
                                     tensorboard_log=str(run_dir / "tensorboard") if config.tensorboard else None, **kwargs)
        if not config.tensorboard:  # SB3's default logger would leave an empty SB3-<date> folder in the temp dir
            from stable_baselines3.common.logger import configure

            model.set_logger(configure(str(run_dir), format_strings=[]))
        normalizer = venv if isinstance(venv, VecNormalize) else None

        def save_best() -> None:
            model.save(run_dir / "best_model.zip")
            if normalizer is not None:
                normalizer.save(str(run_dir / "best_vecnormalize.pkl"))

        class Evaluations(BaseCallback):
            def _on_step(self) -> bool:
                evaluator.maybe(model, self.num_timesteps, save_best, normalizer)
                return True

        evaluator.maybe(model, 0, save_best, normalizer)
        status = "finished"
        try:
            model.learn(total_timesteps=steps, callback=Evaluations())
        except KeyboardInterrupt:
            status = "interrupted"
        if status == "finished":
            evaluator.last(model, model.num_timesteps, save_best, normalizer)
        model.save(run_dir / "model.zip")
        if normalizer is not None:
            normalizer.save(str(run_dir / "vecnormalize.pkl"))
        venv.close()
        return status, int(model.num_timesteps)

    def load(self, run_dir: str | Path) -> ModelPolicy | None:
        import pickle

        path = self.load_artifact(run_dir)
        if path is None:
            return None
        model = sb3_class(self.name).load(path, device="cpu")
        normalizer = None
        stats = Path(run_dir) / "best_vecnormalize.pkl"
        if stats.exists():
            with open(stats, "rb") as handle:
                normalizer = pickle.load(handle)  # a file this run wrote
            normalizer.training = False
        return ModelPolicy(model, normalizer)


__all__ = ["SB3_ALGOS", "SB3Learner", "algo_kwargs", "load_hyperparams", "parse_call_dict", "sb3_class"]
