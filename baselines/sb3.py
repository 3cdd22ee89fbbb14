"""stable-baselines3 adapter over the native vector envs (no per-world Python env objects)."""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from diffenvs.env import DiffVectorEnv


class SB3VecEnv(VecEnv):
    """An SB3 ``VecEnv`` that steps a :class:`~diffenvs.env.DiffVectorEnv` (or ``gym.make_vec``'s result).

    Both auto-reset in the same step: SB3's ``dones`` is ``terminated | truncated``, each ended
    world's info carries ``terminal_observation`` and ``TimeLimit.truncated``, and the returned
    observation is that of its new episode. Build the vector env with ``differentiable=False``
    for RL: its recording otherwise grows until ``reset()``.
    """

    def __init__(self, venv: Any):
        self.venv = venv
        self.native: DiffVectorEnv = venv.unwrapped
        super().__init__(self.native.num_envs, self.native.single_observation_space, self.native.single_action_space)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    def reset(self) -> np.ndarray:
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed = None
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, values in info.items():
            if key.startswith("_") or key in ("final_obs",):
                continue
            mask = info.get(f"_{key}", np.ones(self.num_envs, dtype=bool))
            for w in np.flatnonzero(mask):
                infos[w][key] = values[w]
        for w in np.flatnonzero(dones):
            infos[w]["terminal_observation"] = info["final_obs"][w]
            infos[w]["TimeLimit.truncated"] = bool(truncated[w] and not terminated[w])
        return obs, rewards.astype(np.float32), dones, infos

    def seed(self, seed: int | None = None) -> list[int | None]:
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def close(self) -> None:
        self.venv.close()

    def render(self, mode: str | None = None):
        frames = self.native.render()
        return None if frames is None else np.concatenate(frames, axis=1)

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.native, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.native, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self.native, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
