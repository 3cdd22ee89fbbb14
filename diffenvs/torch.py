"""PyTorch interop: the worlds of a native vector env as differentiable torch operations.

:class:`TorchRollout` wraps a differentiable native vector env. Its :meth:`~TorchRollout.step`
takes a tensor of actions (computed by a policy, or leaf parameters of an open-loop sequence) and
returns the observations and rewards as tensors that are part of PyTorch's graph: ``backward()``
on anything computed from them runs the Warp tapes of the recorded steps and hands the adjoints of
the actions back to torch (and of the initial state, see :meth:`~TorchRollout.reset`). Closed
loops work: an action computed from an observation receives the gradient through the simulator
of every later reward.

Each step is one :class:`torch.autograd.Function`; a chain of token tensors orders them, so that
autograd differentiates the steps newest first, as the tapes require (the adjoint of a step's
state passes between the Warp arrays directly, never through torch).

Semantics, as the env's own ``grad()``:

- an action's gradient is that of the applied action, passed straight through the clipping to
  [-1, 1] (as ``grad()`` reports it);
- where a world's episode ended in a step (truncation or divergence; autoreset), the returned
  observation is its new episode's first one, with no gradient, and no gradient flows from the new
  episode into the old; a diverged world's reward is 0, with no gradient;
- :meth:`~TorchRollout.detach` starts a new backpropagation window at the current state
  (gradients stop there) and reuses the recorded steps' memory: training loops call it after each
  ``backward()`` to keep memory flat. Calling ``backward()`` through steps of an earlier window
  raises.

Tensors live on the env's device; on a GPU the values pass through host memory for now (numpy),
correct but not yet zero-copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import warp as wp

__all__ = ["TorchRollout"]


class _Step(torch.autograd.Function):
    """One env step: (action, token, *initial state) -> (observation, reward, token, the step's own observation)."""

    @staticmethod
    def forward(ctx: Any, action: torch.Tensor, token: torch.Tensor, rollout: TorchRollout, *state: torch.Tensor):
        obs, reward, info, ended = rollout._forward(action)
        ctx.rollout, ctx.t, ctx.window = rollout, rollout.env.batch.length - 1, rollout._window
        ctx.ended, ctx.diverged = ended, np.asarray(info["diverged"], dtype=bool)
        ctx.action_dtype, ctx.state_like = action.dtype, state
        own = obs.copy() if info.get("final_obs") is None else np.where(ended[:, None], info["final_obs"], obs).astype(np.float32)
        device = rollout.torch_device
        # The token stays differentiable: its edge makes autograd differentiate step t + 1 before step t.
        return (torch.as_tensor(obs, device=device), torch.as_tensor(reward, device=device),
                torch.zeros((), dtype=torch.float64, device=device), torch.as_tensor(own, device=device))

    @staticmethod
    def backward(ctx: Any, obs_grad: torch.Tensor | None, reward_grad: torch.Tensor | None, _token_grad: Any,
                 own_grad: torch.Tensor | None):
        rollout: TorchRollout = ctx.rollout
        if ctx.window != rollout._window:
            raise RuntimeError("backward() through steps of an earlier window: the rollout was reset or detached "
                               "since; call backward() before detach()")

        def host(grad: torch.Tensor | None) -> np.ndarray | None:
            return None if grad is None else grad.detach().to("cpu", torch.float64).numpy().copy()

        obs, reward, own = host(obs_grad), host(reward_grad), host(own_grad)
        if obs is not None:
            obs[ctx.ended | ctx.diverged] = 0.0  # a new episode's first observation, or a diverged world's kept one
        if own is not None:
            own[ctx.diverged] = 0.0
            obs = own if obs is None else obs + own
        if reward is not None:
            reward[ctx.diverged] = 0.0
        action = rollout.env.batch.vjp_step(ctx.t, obs, reward)
        grads: list[Any] = [torch.as_tensor(action, dtype=ctx.action_dtype, device=rollout.torch_device), None, None]
        if ctx.state_like:
            initial = rollout.env.batch.initial_state_grad()
            grads += [torch.as_tensor(initial[name], dtype=like.dtype, device=like.device)
                      for name, like in zip(rollout._state_names, ctx.state_like)]
        return tuple(grads)


class TorchRollout:
    """A differentiable native vector env driven with torch tensors (see the module docstring).

    Args:
        env: A native diffenvs vector env made with ``differentiable=True`` (``gym.make_vec(id,
            num_envs=N, vectorization_mode="vector_entry_point")``; one world for a single episode).

    Example::

        rollout = TorchRollout(gym.make_vec("DiffEnvs/Pusher-v0", num_envs=64, vectorization_mode="vector_entry_point"))
        obs, _ = rollout.reset(seed=0)
        for iteration in range(1000):
            total = 0.0
            for _ in range(16):                       # a truncated window of 16 steps
                obs, reward, *_ = rollout.step(policy(obs))
                total = total + reward.sum()
            optimizer.zero_grad(); (-total).backward(); optimizer.step()
            rollout.detach()                          # the next window starts here
            obs = obs.detach()

    Raises:
        TypeError: an env that is not a native diffenvs vector env.
        ValueError: an env made with ``differentiable=False``.
    """

    def __init__(self, env: Any):
        from diffenvs.env import DiffVectorEnv

        inner = getattr(env, "unwrapped", env)
        if not isinstance(inner, DiffVectorEnv):
            raise TypeError(f"TorchRollout needs a native diffenvs vector env (gym.make_vec(..., vectorization_mode="
                             f"'vector_entry_point')), got {type(inner).__name__}")
        if not inner.differentiable:
            raise ValueError("TorchRollout needs an env made with differentiable=True")
        self.env = inner
        self.torch_device = torch.device("cpu" if inner.task.device.is_cpu else wp.device_to_torch(inner.task.device))
        self.num_envs = inner.num_envs
        self._window = 0
        self._token: torch.Tensor | None = None
        self._state: tuple[torch.Tensor, ...] = ()
        self._state_names: tuple[str, ...] = ()

    # episodes -----------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, state: dict[str, torch.Tensor] | None = None,
              options: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """New episodes: drawn from ``seed`` (as the env's ``reset``), or from ``state`` (tensors
        with the layout of ``env.get_state()``). Gradients reach ``state``'s tensors that require
        them, through every step until the next :meth:`detach` or reset.

        Returns:
            The observations (num_envs, obs_dim) as a float32 tensor, and the env's info.
        """
        self._window += 1
        self._state, self._state_names = (), ()
        if state is None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            self._state_names = tuple(state)
            self._state = tuple(state[name] for name in self._state_names)
            obs = self.env.set_state({name: value.detach().to("cpu").numpy() for name, value in state.items()})
            info = {}
        self._token = torch.zeros((), dtype=torch.float64, device=self.torch_device, requires_grad=True)
        return torch.as_tensor(np.asarray(obs), device=self.torch_device), info

    def detach(self) -> None:
        """Start a new backpropagation window at the current state (episodes go on); see the module docstring."""
        self.env.detach()
        self._window += 1
        self._state, self._state_names = (), ()
        self._token = torch.zeros((), dtype=torch.float64, device=self.torch_device, requires_grad=True)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every world with ``actions`` (num_envs, action_dim).

        Returns:
            Observations (num_envs, obs_dim, float32) and rewards (num_envs, float64) as tensors in
            torch's graph, then terminated and truncated (numpy bool arrays) and the env's info, whose
            ``final_obs`` is a tensor in the graph too: every world's observation after the step
            before any autoreset (the last observation of an ended episode, e.g. for a value
            function's bootstrap; equal to the observation elsewhere).

        Raises:
            TypeError: actions that are not a tensor.
            ValueError: a wrong shape or non-finite actions (nothing is stepped).
            RuntimeError: :meth:`reset` was not called.
        """
        if self._token is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(actions, torch.Tensor):
            raise TypeError(f"actions must be a torch tensor, got {type(actions).__name__}")
        state = self._state if self.env.batch.length == 0 else ()
        obs, reward, token, own = _Step.apply(actions, self._token, self, *state)
        self._token = token
        terminated, truncated, info = self._last_extra
        info = {**info, "final_obs": own}
        return obs, reward, terminated, truncated, info

    # internals ----------------------------------------------------------------------------------

    def _forward(self, action: torch.Tensor):
        obs, reward, terminated, truncated, info = self.env.step(action.detach().to("cpu", torch.float64).numpy())
        self._last_extra = (terminated, truncated, info)
        return np.asarray(obs, dtype=np.float32), np.asarray(reward, dtype=np.float64), info, terminated | truncated
