"""Policies trained through the simulator: analytic policy gradients (APG) and SHAC.

Both step a differentiable native vector env through :class:`diffenvs.torch.TorchRollout`, so a
closed-loop policy receives the simulator's analytic gradients, in truncated windows of
``window`` steps (gradients stop at a window's start; :meth:`~diffenvs.torch.TorchRollout.detach`
keeps memory flat over any number of iterations), across autoresets.

- ``apg``: backpropagation through each window of the batched rollout: the loss is minus the mean
  discounted return of the window (Brax's APG, with truncation). A deterministic MLP policy
  (``tanh`` outputs), optional Gaussian exploration noise (reparameterized).
- ``shac``: short-horizon actor-critic (Xu et al., ICLR 2022): the window's discounted return plus
  the target critic's value of the state it ends in (and of the last state of an episode that is
  truncated inside it; zero after a divergence), a stochastic policy (``tanh`` of a Gaussian around
  the network's output, reparameterized, state-independent log standard deviation, as the paper's:
  actions stay inside [-1, 1]; evaluation takes ``tanh`` of the mean), a critic trained on TD(lambda) targets of the
  window (``critic_iters`` epochs of ``critic_batches`` minibatches), a target critic updated as
  ``alpha * target + (1 - alpha) * critic``.

Both normalize observations with running statistics (no gradient through the statistics), clip
the gradient norm, and can run the gradient remedies of the env (``remedies``, e.g.
``{contact_weight: 10, softness: 0.02}``, scheduled linearly to ``remedies_final`` over training);
the policy is evaluated in the reported setting (a separate env without remedies).

Budget: every window costs ``2 * n_envs * window`` env steps (forward and backward), counted as the
optimizers count theirs; training stops before a window that would exceed ``steps``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

import numpy as np

from diffenvs.config import ConfigError

DiffAlgo = Literal["apg", "shac"]
DIFF_ALGOS: tuple[str, ...] = typing.get_args(DiffAlgo)


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


def window_cost(config: DiffRLConfig) -> int:
    """Env steps of one training window: forward and backward."""
    return 2 * config.n_envs * config.window


def train(algo: str, env_id: str, config: DiffRLConfig, *, steps: int, seed: int, instance: int | None,
          env_kwargs: dict[str, Any], on_window: Any = None) -> Agent:
    """Train ``algo`` (``apg`` or ``shac``) for ``steps`` env steps; ``on_window(agent, env_steps, stats)``
    after every window (evaluations, progress; it may raise ``KeyboardInterrupt`` to stop).

    Raises:
        ConfigError: an unknown algorithm or a remedy the env does not have.
    """
    import gymnasium as gym
    import torch

    import diffenvs  # noqa: F401  (registers the ids)
    from diffenvs.torch import TorchRollout

    if algo not in DIFF_ALGOS:
        raise ConfigError(f"algo must be one of {DIFF_ALGOS}, got {algo!r}")
    torch.set_num_threads(1)
    env = gym.make_vec(env_id, num_envs=config.n_envs, vectorization_mode="vector_entry_point", differentiable=True,
                       instance_seed=instance, **env_kwargs)
    unknown = sorted(set(config.remedies) - set(env.unwrapped.remedies))
    if unknown:
        raise ConfigError(f"remedies {unknown} are not remedies of {env_id} ({sorted(env.unwrapped.remedies)})")
    obs_dim, action_dim = env.single_observation_space.shape[0], env.single_action_space.shape[0]
    agent = Agent(obs_dim, action_dim, config, critic=algo == "shac", seed=seed)
    actor_params = [*agent.actor.parameters(), *([agent.log_std] if algo == "shac" else [])]
    actor_opt = torch.optim.Adam(actor_params, lr=config.learning_rate, betas=config.betas)
    critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=config.critic_lr, betas=config.betas) if agent.critic else None
    rollout = TorchRollout(env)
    if config.remedies:
        env.unwrapped.set_remedies(**config.remedies)
    obs, _ = rollout.reset(seed=seed)
    cost, env_steps, windows = window_cost(config), 0, max(1, steps // window_cost(config))
    if on_window is not None:
        on_window(agent, 0, {})  # the untrained policy
    generator = torch.Generator().manual_seed(seed)
    try:
        for index in range(windows):
            progress = index / max(windows - 1, 1)
            lr_scale = 1.0 - progress if config.lr_schedule == "linear" else 1.0
            for group in actor_opt.param_groups:
                group["lr"] = config.learning_rate * max(lr_scale, 0.02)
            if critic_opt is not None:
                for group in critic_opt.param_groups:
                    group["lr"] = config.critic_lr * max(lr_scale, 0.02)
            if agent.obs_rms is not None and index == 0:
                agent.obs_rms.update(obs.numpy())
            if algo == "apg":
                obs, stats = _apg_window(agent, rollout, obs, config, generator, actor_opt)
            else:
                obs, stats = _shac_window(agent, rollout, obs, config, generator, actor_opt, critic_opt)
            rollout.detach()
            if config.remedies:
                env.unwrapped.set_remedies(**{name: start + progress * (config.remedies_final.get(name, start) - start)
                                              for name, start in config.remedies.items()})
            obs = obs.detach()
            env_steps += cost
            if on_window is not None:
                on_window(agent, env_steps, stats)
    finally:
        env.close()
    return agent


def _apg_window(agent: Agent, rollout: Any, obs: Any, config: DiffRLConfig, generator: Any, actor_opt: Any):
    import torch

    total = torch.zeros(rollout.num_envs, dtype=torch.float64)
    discount = torch.ones(rollout.num_envs, dtype=torch.float64)
    seen = []
    for _ in range(config.window):
        seen.append(obs.detach().numpy())
        action = agent.mean_action(obs)
        if config.action_noise > 0:
            action = action + config.action_noise * torch.randn(action.shape, generator=generator)
        obs, reward, terminated, truncated, _ = rollout.step(action)
        total = total + discount * reward
        ended = torch.as_tensor(terminated | truncated)
        discount = torch.where(ended, torch.ones_like(discount), discount * config.gamma)
    loss = -total.mean() / config.window
    actor_opt.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(agent.actor.parameters(), config.grad_clip)
    actor_opt.step()
    if agent.obs_rms is not None:  # statistics for the next window (constants within one)
        agent.obs_rms.update(np.concatenate(seen))
    return obs, {"actor_loss": float(loss.detach()), "grad_norm": float(norm)}


def _shac_window(agent: Agent, rollout: Any, obs: Any, config: DiffRLConfig, generator: Any, actor_opt: Any,
                 critic_opt: Any):
    import torch

    n, gamma = rollout.num_envs, config.gamma
    accumulated = torch.zeros(n, dtype=torch.float64)
    discount = torch.ones(n, dtype=torch.float64)
    actor_loss = torch.zeros((), dtype=torch.float64)
    inputs, rewards, next_values, ends = [], [], [], []
    std = torch.exp(agent.log_std)
    raw = []
    for t in range(config.window):
        raw.append(obs.detach().numpy())
        normalized = agent.normalize(obs)
        inputs.append(normalized.detach())
        mean = agent.actor(normalized)  # the Gaussian lives before the tanh: actions stay inside [-1, 1]
        action = torch.tanh(mean + std * torch.randn(mean.shape, generator=generator))
        obs, reward, terminated, truncated, info = rollout.step(action)
        terminated_t, truncated_t = torch.as_tensor(terminated), torch.as_tensor(truncated)
        ended = terminated_t | truncated_t
        # the value of the state the step reached: the last state of a truncated episode, none after a divergence
        value = agent.target(agent.normalize(torch.where(ended[:, None], info["final_obs"], obs))).squeeze(-1).double()
        value = torch.where(terminated_t, torch.zeros_like(value), value)
        accumulated = accumulated + discount * reward
        last = t == config.window - 1
        closing = torch.ones_like(ended) if last else ended
        actor_loss = actor_loss - torch.where(closing, accumulated + gamma * discount * value, torch.zeros_like(value)).sum()
        rewards.append(reward.detach())
        next_values.append(value.detach())
        ends.append(ended)
        discount = torch.where(ended, torch.ones_like(discount), discount * gamma)
        accumulated = torch.where(ended, torch.zeros_like(accumulated), accumulated)
    actor_loss = actor_loss / (config.window * n)
    actor_opt.zero_grad()
    actor_loss.backward()
    norm = torch.nn.utils.clip_grad_norm_([*agent.actor.parameters(), agent.log_std], config.grad_clip)
    actor_opt.step()

    # TD(lambda) targets of the window: G_t = r_t + gamma * ((1 - lam) V_t+1 + lam G_t+1), cut at episode ends
    targets = [torch.zeros(n, dtype=torch.float64)] * config.window
    following = torch.zeros(n, dtype=torch.float64)
    for t in reversed(range(config.window)):
        if t == config.window - 1:
            following = rewards[t] + gamma * next_values[t]
        else:
            mixed = (1 - config.lam) * next_values[t] + config.lam * following
            following = rewards[t] + gamma * torch.where(ends[t], next_values[t], mixed)
        targets[t] = following
    states = torch.cat(inputs)
    returns = torch.cat(targets).float()
    critic_loss = math.nan
    for _ in range(config.critic_iters):
        order = torch.randperm(len(states), generator=generator)
        for batch in order.chunk(config.critic_batches):
            loss = ((agent.critic(states[batch]).squeeze(-1) - returns[batch]) ** 2).mean()
            critic_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.critic.parameters(), config.grad_clip)
            critic_opt.step()
            critic_loss = float(loss.detach())
    with torch.no_grad():
        for target, source in zip(agent.target.parameters(), agent.critic.parameters()):
            target.mul_(config.target_alpha).add_((1 - config.target_alpha) * source)
    if agent.obs_rms is not None:  # statistics for the next window (constants within one)
        agent.obs_rms.update(np.concatenate(raw))
    return obs, {"actor_loss": float(actor_loss.detach()), "critic_loss": critic_loss, "grad_norm": float(norm)}


__all__ = ["DIFF_ALGOS", "Agent", "DiffRLConfig", "diffrl_config", "train", "window_cost"]
