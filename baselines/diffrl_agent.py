"""The networks of APG and SHAC and their configuration: :class:`DiffRLConfig` (a section of
``configs/rl/apg.yaml`` or ``shac.yaml``) and :class:`Agent` (policy, observation normalization,
SHAC's critics; ``predict`` as SB3's, saved and loaded as a state dict)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np


@dataclasses.dataclass(frozen=True)
class DiffRLConfig:
    """Hyperparameters of APG and SHAC (a section of ``configs/rl/apg.yaml`` or ``shac.yaml``).

    Attributes:
        n_envs: Worlds of the training vector env.
        n_timesteps: Default training budget in env steps (forward and backward).
        window: Steps per backpropagation window (SHAC's short horizon).
        learning_rate: Actor's Adam step size (decayed linearly to 0 with ``lr_schedule: linear``).
        lr_schedule: ``constant`` or ``linear``.
        betas: Adam's betas (actor and critic).
        net_arch: Hidden layers of the actor (and of the critic).
        activation: ``elu``, ``tanh`` or ``relu``.
        gamma: Discount.
        grad_clip: Largest gradient norm (actor and critic).
        normalize_obs: Normalize observations with running mean and variance.
        action_noise: APG: standard deviation of Gaussian exploration noise on the actions.
        init_log_std: SHAC: initial log standard deviation of the policy.
        critic_lr: SHAC: critic's Adam step size.
        lam: SHAC: lambda of the TD(lambda) targets.
        critic_iters: SHAC: epochs over the window's samples per iteration.
        critic_batches: SHAC: minibatches per epoch.
        target_alpha: SHAC: target critic update ``alpha * target + (1 - alpha) * critic``.
        remedies: Gradient remedies of the training env (names of ``env.remedies``).
        remedies_final: Their values at the end of training (linear schedule); missing: constant.
    """

    n_envs: int = 32
    n_timesteps: int = 200_000
    window: int = 16
    learning_rate: float = 2e-3
    lr_schedule: Literal["constant", "linear"] = "linear"
    betas: tuple[float, float] = (0.7, 0.95)
    net_arch: tuple[int, ...] = (64, 64)
    activation: Literal["elu", "tanh", "relu"] = "elu"
    gamma: float = 0.99
    grad_clip: float = 1.0
    normalize_obs: bool = True
    action_noise: float = 0.0
    init_log_std: float = -1.0
    critic_lr: float = 2e-3
    lam: float = 0.95
    critic_iters: int = 16
    critic_batches: int = 4
    target_alpha: float = 0.2
    remedies: dict[str, float] = dataclasses.field(default_factory=dict)
    remedies_final: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.n_envs, self.window, self.n_timesteps, self.critic_iters, self.critic_batches) < 1:
            raise ValueError("n_envs, window, n_timesteps, critic_iters and critic_batches must be >= 1")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1 and 0 <= self.target_alpha < 1):
            raise ValueError("need 0 < gamma <= 1, 0 <= lam <= 1 and 0 <= target_alpha < 1")
        if self.learning_rate <= 0 or self.critic_lr <= 0 or self.grad_clip <= 0 or self.action_noise < 0:
            raise ValueError("learning rates and grad_clip must be > 0, action_noise >= 0")
        unknown = sorted(set(self.remedies_final) - set(self.remedies))
        if unknown:
            raise ValueError(f"remedies_final names remedies without a start value: {unknown}")


def diffrl_config(section: dict[str, Any], overrides: dict[str, Any], *, where: str) -> DiffRLConfig:
    """The config of a hyperparameter section and its overrides (unknown keys raise ``ConfigError``)."""
    from diffenvs.config import from_dict

    values = {**section, **overrides}
    values.pop("policy", None)  # an rl-zoo3 habit, meaningless here
    if isinstance(values.get("n_timesteps"), float):
        values["n_timesteps"] = int(values["n_timesteps"])
    return from_dict(DiffRLConfig, values, where=where)


class RunningMeanStd:
    """Running mean and variance of observations (Welford over batches)."""

    def __init__(self, dim: int):
        self.mean = np.zeros(dim)
        self.var = np.ones(dim)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64).reshape(-1, self.mean.shape[0])
        mean, var, count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta, total = mean - self.mean, self.count + count
        self.mean = self.mean + delta * count / total
        self.var = (self.var * self.count + var * count + delta**2 * self.count * count / total) / total
        self.count = total


class Agent:
    """The trained networks: a policy with observation normalization (``predict`` as SB3's), and SHAC's critic."""

    def __init__(self, obs_dim: int, action_dim: int, config: DiffRLConfig, *, critic: bool, seed: int):
        import torch

        torch.manual_seed(seed)
        self.config = config
        self.obs_rms = RunningMeanStd(obs_dim) if config.normalize_obs else None
        self.actor = _mlp(obs_dim, action_dim, config)
        self.log_std = torch.nn.Parameter(torch.full((action_dim,), config.init_log_std, dtype=torch.float32))
        self.critic = _mlp(obs_dim, 1, config) if critic else None
        self.target = _mlp(obs_dim, 1, config) if critic else None
        if critic:
            self.target.load_state_dict(self.critic.state_dict())
            self.target.requires_grad_(False)  # the actor's loss reads it; only the soft update changes it

    def normalize(self, obs: Any) -> Any:
        import torch

        if self.obs_rms is None:
            return obs.float()
        mean = torch.as_tensor(self.obs_rms.mean, dtype=torch.float32, device=obs.device)
        std = torch.as_tensor(np.sqrt(self.obs_rms.var + 1e-8), dtype=torch.float32, device=obs.device)
        return ((obs.float() - mean) / std).clamp(-10.0, 10.0)

    def mean_action(self, obs: Any) -> Any:
        import torch

        return torch.tanh(self.actor(self.normalize(obs)))

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        """The mean action of an observation (SB3's ``predict`` signature; evaluation is deterministic)."""
        import torch

        with torch.no_grad():
            batch = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(-1, self.actor[0].in_features)
            action = self.mean_action(batch).double().numpy()
        return action.reshape(np.shape(obs)[:-1] + (action.shape[-1],)), None

    @classmethod
    def load(cls, path: str | Any) -> Agent:
        """An agent from a run's ``model.pt`` or ``best_model.pt`` (``predict`` works as after training)."""
        import torch

        state = torch.load(path, weights_only=False)
        config = DiffRLConfig(**{key: tuple(value) if isinstance(value, list) else value
                                 for key, value in state["config"].items()})
        obs_dim = state["actor"]["0.weight"].shape[1]
        action_dim = state["log_std"].shape[0]
        agent = cls(obs_dim, action_dim, config, critic="critic" in state, seed=0)
        agent.actor.load_state_dict(state["actor"])
        with torch.no_grad():
            agent.log_std.copy_(state["log_std"])
        if "critic" in state:
            agent.critic.load_state_dict(state["critic"])
        if "obs_rms" in state:
            agent.obs_rms.mean, agent.obs_rms.var = state["obs_rms"]["mean"], state["obs_rms"]["var"]
            agent.obs_rms.count = state["obs_rms"]["count"]
        return agent

    def state_dict(self) -> dict[str, Any]:
        state = {"actor": self.actor.state_dict(), "log_std": self.log_std.detach().clone(),
                 "config": dataclasses.asdict(self.config)}
        if self.obs_rms is not None:
            state["obs_rms"] = {"mean": self.obs_rms.mean, "var": self.obs_rms.var, "count": self.obs_rms.count}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        return state


def _mlp(inputs: int, outputs: int, config: DiffRLConfig) -> Any:
    import torch

    activation = {"elu": torch.nn.ELU, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[config.activation]
    layers: list[Any] = []
    size = inputs
    for width in config.net_arch:
        layers += [torch.nn.Linear(size, width), activation()]
        size = width
    layers.append(torch.nn.Linear(size, outputs))
    return torch.nn.Sequential(*layers)


__all__ = ["Agent", "DiffRLConfig", "RunningMeanStd", "diffrl_config"]
