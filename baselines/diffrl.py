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

import math
from pathlib import Path
from typing import Any

import numpy as np

from diffenvs.baselines.diffrl_agent import Agent, DiffRLConfig, diffrl_config
from diffenvs.baselines.learner import Evaluator, LearnerMethod, TrainConfig
from diffenvs.baselines.method import ModelPolicy
from diffenvs.config import ConfigError

SATURATED = 0.99
"""An action component beyond this magnitude is saturated: ``tanh``'s slope there is under 0.02, so
almost no gradient reaches the network (``train.csv``'s ``saturated`` counts them)."""

TRAIN_LOG_WINDOWS = 10
"""Windows averaged into one row of ``train.csv``."""

DIFF_ALGOS: tuple[str, ...] = ("apg", "shac")
"""The algorithms :func:`train` implements (each registered as a learner in :mod:`diffenvs.baselines.method`)."""


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
    seen, saturated = [], []
    for _ in range(config.window):
        seen.append(obs.detach().numpy())
        action = agent.mean_action(obs)
        saturated.append(float((action.detach().abs() > SATURATED).double().mean()))
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
    return obs, {"actor_loss": float(loss.detach()), "grad_norm": float(norm), "saturated": float(np.mean(saturated)),
                 "reward": float(total.detach().mean()) / config.window}


def _shac_window(agent: Agent, rollout: Any, obs: Any, config: DiffRLConfig, generator: Any, actor_opt: Any,
                 critic_opt: Any):
    import torch

    n, gamma = rollout.num_envs, config.gamma
    accumulated = torch.zeros(n, dtype=torch.float64)
    discount = torch.ones(n, dtype=torch.float64)
    actor_loss = torch.zeros((), dtype=torch.float64)
    inputs, rewards, next_values, ends = [], [], [], []
    std = torch.exp(agent.log_std)
    raw, saturated, values = [], [], []
    for t in range(config.window):
        raw.append(obs.detach().numpy())
        normalized = agent.normalize(obs)
        inputs.append(normalized.detach())
        mean = agent.actor(normalized)  # the Gaussian lives before the tanh: actions stay inside [-1, 1]
        action = torch.tanh(mean + std * torch.randn(mean.shape, generator=generator))
        saturated.append(float((torch.tanh(mean.detach()).abs() > SATURATED).double().mean()))
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
        values.append(float(value.detach().mean()))
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
    return obs, {"actor_loss": float(actor_loss.detach()), "critic_loss": critic_loss, "grad_norm": float(norm),
                 "saturated": float(np.mean(saturated)), "reward": float(torch.stack(rewards).mean()),
                 "value": float(np.mean(values)), "std": float(std.detach().mean())}


class _TrainLog:
    """``train.csv``: the training windows' diagnostics (:func:`_apg_window`'s and
    :func:`_shac_window`'s stats: actor loss, critic loss, gradient norm before clipping, fraction of
    saturated actions, mean reward per step, mean target value, policy std), averaged over
    :data:`TRAIN_LOG_WINDOWS` windows per row, flushed as written."""

    def __init__(self, path: Path):
        self.path, self.handle, self.writer, self.pending, self.env_steps = path, None, None, [], 0

    def add(self, env_steps: int, stats: dict[str, float]) -> None:
        if not stats:  # the untrained policy's call
            return
        self.pending.append(stats)
        self.env_steps = env_steps
        if len(self.pending) == TRAIN_LOG_WINDOWS:
            self.flush()

    def flush(self) -> None:
        import csv

        if not self.pending:
            return
        row = {"env_steps": self.env_steps, **{key: f"{np.mean([s[key] for s in self.pending]):.6g}" for key in self.pending[0]}}
        if self.writer is None:
            self.handle = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self.writer = csv.DictWriter(self.handle, fieldnames=list(row))
            self.writer.writeheader()
        self.writer.writerow(row)
        self.handle.flush()
        self.pending = []

    def close(self) -> None:
        self.flush()  # the last windows, fewer than a row's
        if self.handle is not None:
            self.handle.close()


class DiffRLLearner(LearnerMethod):
    """APG or SHAC as a registered learner (sections of ``configs/rl/apg.yaml`` and ``shac.yaml``:
    :class:`DiffRLConfig`'s fields)."""

    artifact = "best_model.pt"
    config_class = DiffRLConfig

    def check(self, section: dict[str, Any], *, where: str) -> tuple[int, int]:
        config = diffrl_config(section, {}, where=where)
        return config.n_timesteps, config.n_envs

    def learn(self, config: TrainConfig, section: dict[str, Any], steps: int, run_dir: Path,
              evaluator: Evaluator) -> tuple[str, int]:
        import torch

        diff = diffrl_config(section, {}, where=self.name)
        latest: dict[str, Any] = {"agent": None, "env_steps": 0}
        diagnostics = _TrainLog(run_dir / "train.csv")

        def save_best() -> None:
            torch.save(latest["agent"].state_dict(), run_dir / "best_model.pt")

        def on_window(agent: Agent, env_steps: int, stats: dict[str, float]) -> None:
            latest["agent"], latest["env_steps"] = agent, env_steps
            diagnostics.add(env_steps, stats)
            evaluator.maybe(agent, env_steps, save_best)

        status = "finished"
        try:
            train(self.name, config.env_id, diff, steps=steps, seed=config.seed, instance=config.instance,
                  env_kwargs=config.env_kwargs, on_window=on_window)
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            diagnostics.close()
        agent = latest["agent"]
        if agent is not None:
            if status == "finished":
                evaluator.last(agent, latest["env_steps"], save_best)
            torch.save(agent.state_dict(), run_dir / "model.pt")
        return status, int(latest["env_steps"])

    def load(self, run_dir: str | Path) -> ModelPolicy | None:
        path = self.load_artifact(run_dir)
        return None if path is None else ModelPolicy(Agent.load(path))


__all__ = ["DIFF_ALGOS", "Agent", "DiffRLConfig", "DiffRLLearner", "diffrl_config", "train", "window_cost"]
