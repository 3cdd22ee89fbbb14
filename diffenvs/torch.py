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

Tensors live on the env's device, and the values pass between torch and Warp there, never
through host memory (``wp.from_torch`` / ``wp.to_torch``): a step copies the actions into the
step's action buffer and returns copies of its observation and reward buffers, all on the device;
``backward()`` copies the adjoints in and the action's adjoint out the same way. The env's
episode logic still receives its host copy of each step's outputs (observations, rewards, flags,
``info``: one synchronisation per step on a GPU), but nothing comes back from it to torch except
in a step where an episode ends (an autoreset or a diverged world): that step's observation comes
from the host's episode logic. :meth:`TorchRollout.reset`
from a ``state`` passes it through the host, where it is validated.

Bad input: actions of the wrong shape or with a non-finite entry raise ``ValueError`` before
anything is stepped; finite actions are clipped to [-1, 1]. A non-finite adjoint reaching the
rollout in ``backward()`` raises ``ValueError``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import warp as wp

__all__ = ["TorchRollout"]


class _Step(torch.autograd.Function):
    """One env step: (action, token, *initial state) -> (observation, reward, token, the step's own observation)."""

    @staticmethod
    def forward(ctx: Any, action: torch.Tensor, token: torch.Tensor, rollout: TorchRollout, *state: torch.Tensor):
        obs, reward, own, diverged, ended = rollout._forward(action)
        ctx.rollout, ctx.t, ctx.window = rollout, rollout.env.batch.length - 1, rollout._window
        ctx.ended, ctx.diverged = ended, diverged
        ctx.action_dtype, ctx.action_device, ctx.state_like = action.dtype, action.device, state
        # The token stays differentiable: its edge makes autograd differentiate step t + 1 before step t.
        return obs, reward, torch.zeros((), dtype=torch.float64, device=rollout.torch_device), own

    @staticmethod
    def backward(ctx: Any, obs_grad: torch.Tensor | None, reward_grad: torch.Tensor | None, _token_grad: Any,
                 own_grad: torch.Tensor | None):
        rollout: TorchRollout = ctx.rollout
        if ctx.window != rollout._window:
            raise RuntimeError("backward() through steps of an earlier window: the rollout was reset or detached "
                               "since; call backward() before detach()")
        device = rollout.torch_device

        def masked(grad: torch.Tensor | None, rows: np.ndarray) -> torch.Tensor | None:
            if grad is None:
                return None
            grad = grad.detach().to(device, torch.float64)
            if rows.any():
                rows = torch.as_tensor(rows, device=device).reshape(-1, *[1] * (grad.ndim - 1))
                grad = torch.where(rows, torch.zeros((), dtype=grad.dtype, device=device), grad)
            return grad

        # A new episode's first observation, or a diverged world's kept one, carries no gradient.
        obs = masked(obs_grad, ctx.ended | ctx.diverged)
        own = masked(own_grad, ctx.diverged)
        obs = own if obs is None else obs if own is None else obs + own
        reward = masked(reward_grad, ctx.diverged)
        for name, grad in (("observations", obs), ("rewards", reward)):
            if grad is not None and not bool(torch.isfinite(grad).all()):
                raise ValueError(f"a non-finite gradient of the {name} reached the rollout")

        def warp(grad: torch.Tensor | None, dtype: torch.dtype) -> wp.array | None:
            return None if grad is None else wp.from_torch(grad.to(dtype).contiguous())

        with rollout._streams():
            action = rollout.env.batch.vjp_step(ctx.t, warp(obs, torch.float32), warp(reward, torch.float64))
        grads: list[Any] = [wp.to_torch(action).to(ctx.action_device, ctx.action_dtype, copy=True), None, None]
        if ctx.state_like:
            initial = rollout.env.batch.initial_state_grad()
            grads += [wp.to_torch(initial[name]).to(like.device, like.dtype, copy=True)
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

    @contextlib.contextmanager
    def _streams(self):
        """Order Warp's work inside the block after torch's before it, and torch's after it behind
        Warp's (on a GPU the two may use different streams): Warp reads tensors torch just wrote,
        and torch may reuse their memory or read Warp's outputs only once Warp is done."""
        if self.torch_device.type != "cuda":
            yield
            return
        warp_stream = wp.get_stream(self.env.task.device)
        torch_stream = wp.stream_from_torch(torch.cuda.current_stream(self.torch_device))
        warp_stream.wait_stream(torch_stream)
        yield
        torch_stream.wait_stream(warp_stream)

    def _forward(self, action: torch.Tensor):
        """Step with ``action``; return observation, reward and the step's own observation (tensors on
        the env's device) and the diverged and ended worlds (numpy)."""
        shape = (self.num_envs, self.env.task.action_dim)
        if tuple(action.shape) != shape:
            raise ValueError(f"actions must have shape {shape}, got {tuple(action.shape)}")
        applied = action.detach().to(self.torch_device, torch.float64)
        if not bool(torch.isfinite(applied).all()):
            raise ValueError(f"actions with non-finite entries: {applied}")
        applied = applied.clamp(-1.0, 1.0).contiguous()
        t = self.env.batch.length
        with self._streams():
            obs, reward, terminated, truncated, info = self.env._step_applied(wp.from_torch(applied))
        self._last_extra = (terminated, truncated, info)
        ended, diverged = terminated | truncated, np.asarray(info["diverged"], dtype=bool)
        if ended.any():  # the host's episode logic replaced rows (autoreset, diverged worlds): take its values
            own = obs if info.get("final_obs") is None else np.where(ended[:, None], info["final_obs"], obs)
            return (torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.torch_device),
                    torch.as_tensor(np.asarray(reward, dtype=np.float64), device=self.torch_device),
                    torch.as_tensor(np.asarray(own, dtype=np.float32), device=self.torch_device), diverged, ended)
        # The common step: the step's own output arrays, copied on the device.
        obs_array, reward_array = self.env.batch.step_outputs(t)
        obs = wp.to_torch(obs_array).clone()
        return obs, wp.to_torch(reward_array).clone(), obs.clone(), diverged, ended
