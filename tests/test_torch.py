"""PyTorch interop: rollouts as torch operations whose backward() runs the Warp tapes."""

from __future__ import annotations

import contextlib
import resource
import sys

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import warp as wp

from diffenvs.torch import TorchRollout
from tests.conftest import DOUGH_IDS, ENV_IDS, SMALL


def make(env_id="DiffEnvs/Pusher-v0", num_envs=2, **kwargs):
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **{**SMALL[env_id], **kwargs})


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_open_loop_gradients_equal_grad(env_id):
    env = make(env_id)
    rollout = TorchRollout(env)
    rollout.reset(seed=3)
    actions = torch.tensor(np.random.default_rng(0).uniform(-1, 1, (3, 2, *env.single_action_space.shape)), requires_grad=True)
    total = sum(rollout.step(actions[t])[1].sum() for t in range(3))
    total.backward()
    expected = env.unwrapped.grad("return")
    np.testing.assert_allclose(total.item(), expected.value.sum(), rtol=1e-12)
    np.testing.assert_allclose(actions.grad.numpy().transpose(1, 0, 2), expected.actions, rtol=1e-9, atol=1e-12)
    assert np.abs(expected.actions).max() > 0


def _linear_policy_return(rollout, weights, steps=6, seed=1):
    obs, _ = rollout.reset(seed=seed)
    total = 0.0
    for _ in range(steps):
        obs, reward, *_ = rollout.step(torch.tanh(obs.double() @ weights.T))
        total = total + reward.sum()
    return total


def test_a_closed_loop_policy_gets_the_gradient_through_observations():
    """Actions computed from observations: the policy's gradient passes through the simulator and
    through every later observation; central differences agree (observations are float32)."""
    rollout = TorchRollout(make())
    weights = (0.3 * torch.randn(2, rollout.env.single_observation_space.shape[0], dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    _linear_policy_return(rollout, weights).backward()
    eps = 1e-4
    for i, j in [(0, 0), (1, 3), (0, 9), (1, 12)]:
        plus, minus = weights.detach().clone(), weights.detach().clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        with torch.no_grad():
            fd = (_linear_policy_return(rollout, plus) - _linear_policy_return(rollout, minus)).item() / (2 * eps)
        assert weights.grad[i, j].item() == pytest.approx(fd, rel=1e-3, abs=1e-6)


def test_gradcheck_through_actions_and_the_initial_state():
    env = make()
    env.reset(seed=0)
    state = {name: torch.tensor(value) for name, value in env.unwrapped.get_state().items()}
    box = state["box_pose"].clone().requires_grad_(True)
    actions = torch.tensor(np.random.default_rng(1).uniform(-0.9, 0.9, (3, 2, 2)), requires_grad=True)

    def rewards(actions, box):  # a rollout per call: gradcheck differentiates the first call's graph last
        rollout = TorchRollout(make())
        rollout.reset(state={**state, "box_pose": box})
        return torch.stack([rollout.step(actions[t])[1] for t in range(3)])

    assert torch.autograd.gradcheck(rewards, (actions, box), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_windows_stop_gradients_and_keep_memory_flat():
    env = make(max_episode_steps=5)
    rollout = TorchRollout(env)
    obs, _ = rollout.reset(seed=0)
    actions = torch.zeros(2, 2, requires_grad=True)
    first = rollout.step(actions)[1].sum()
    rollout.detach()
    later = torch.full((2, 2), 0.5, dtype=torch.float64, requires_grad=True)
    total = rollout.step(later)[1].sum() + rollout.step(later)[1].sum()
    total.backward()
    expected = env.unwrapped.grad("return")  # the env's own gradient starts at the window too
    np.testing.assert_allclose(later.grad.numpy(), expected.actions.sum(axis=1), rtol=1e-9, atol=1e-12)
    with pytest.raises(RuntimeError, match="earlier window"):
        first.backward()

    # A training loop: windows of 4 steps across autoresets (episodes of 5), detached after each backward.
    def iteration(weights):
        nonlocal obs
        total = 0.0
        for _ in range(4):
            obs, reward, *_ = rollout.step(torch.tanh(obs.double() @ weights.T))
            total = total + reward.sum()
        total.backward()
        rollout.detach()
        obs = obs.detach()

    rollout.detach()
    weights = torch.zeros(2, env.single_observation_space.shape[0], dtype=torch.float64, requires_grad=True)
    for _ in range(20):
        iteration(weights)
    buffers = len(rollout.env.batch.trajectory._buffers)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(150):
        iteration(weights)
    assert len(rollout.env.batch.trajectory._buffers) == buffers <= 5  # the window's steps (and an autoreset after them), reused
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB: flat


def test_no_gradient_crosses_an_autoreset():
    env = make(max_episode_steps=2)
    rollout = TorchRollout(env)
    rollout.reset(seed=0)
    actions = torch.tensor(np.random.default_rng(2).uniform(-1, 1, (3, 2, 2)), requires_grad=True)
    steps = [rollout.step(actions[t]) for t in range(3)]
    steps[2][1].sum().backward()  # the third step belongs to the second episode
    assert torch.all(actions.grad[:2] == 0) and torch.any(actions.grad[2] != 0)
    # the last observation of the first episode (step 2, before the autoreset) carries its gradient
    obs, _, _, truncated, info = steps[1]
    assert truncated.all() and not torch.equal(obs, info["final_obs"])
    actions.grad = None
    obs[:, 0].sum().backward(retain_graph=True)  # the new episode's first observation (pusher x): no gradient
    assert actions.grad is None or torch.all(actions.grad == 0)
    info["final_obs"][:, 0].sum().backward()  # the first episode's last pusher x: its actions move it
    assert torch.all(actions.grad[2] == 0) and torch.all(actions.grad[:2, :, 0] > 0)


def test_steps_and_backward_keep_values_off_the_host(monkeypatch):
    """Actions, observations, rewards and their adjoints pass between torch and Warp on the device
    (wp.from_torch / wp.to_torch): no tensor value goes through numpy in a step or a backward pass
    (here on the CPU, where the same code runs as on a GPU), and the gradients are the env's own."""
    env = make(max_episode_steps=10)
    rollout = TorchRollout(env)
    obs, _ = rollout.reset(seed=4)
    weights = torch.full((2, env.single_observation_space.shape[0]), 0.05, dtype=torch.float64, requires_grad=True)
    actions = []

    def only_by_warp(owner, name):  # Warp's own wp.to_torch wraps CPU memory with torch.as_tensor (no copy)
        real = getattr(owner, name)

        def guarded(*args, **kwargs):
            if not sys._getframe(1).f_globals.get("__name__", "").startswith("warp."):
                raise AssertionError(f"a tensor value went through the host ({name})")
            return real(*args, **kwargs)
        return guarded

    with monkeypatch.context() as patch:
        for name in ("numpy", "tolist", "item"):
            patch.setattr(torch.Tensor, name, only_by_warp(torch.Tensor, name))
        for name in ("as_tensor", "from_numpy", "tensor"):
            patch.setattr(torch, name, only_by_warp(torch, name))
        total = 0.0
        for _ in range(3):  # closed loop: actions from observations
            action = torch.tanh(obs.double() @ weights.T)
            action.retain_grad()
            actions.append(action)
            obs, reward, *_ = rollout.step(action)
            total = total + reward.sum() + 0.1 * obs[:, :2].sum()
        total.backward()
    assert weights.grad.abs().max() > 0
    # the same rollout open loop, objective: the return only, against grad()
    applied = torch.stack([a.detach() for a in actions]).requires_grad_(True)
    rollout.reset(seed=4)
    sum(rollout.step(applied[t])[1].sum() for t in range(3)).backward()
    np.testing.assert_allclose(applied.grad.numpy().transpose(1, 0, 2), env.unwrapped.grad("return").actions,
                               rtol=1e-9, atol=1e-12)


def test_bad_use_raises_clear_errors():
    with pytest.raises(TypeError, match="native diffenvs vector env"):
        TorchRollout(gym.make("DiffEnvs/Pusher-v0"))
    with pytest.raises(ValueError, match="differentiable=True"):
        TorchRollout(make(differentiable=False))
    rollout = TorchRollout(make())
    with pytest.raises(RuntimeError, match="reset"):
        rollout.step(torch.zeros(2, 2))
    rollout.reset(seed=0)
    with pytest.raises(ValueError):
        rollout.step(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="torch tensor"):
        rollout.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        rollout.step(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    assert rollout.env.batch.length == 0  # nothing was stepped
    _, reward, *_ = rollout.step(torch.zeros(2, 2, requires_grad=True))
    with pytest.raises(ValueError, match="non-finite gradient of the rewards"):
        (reward * torch.tensor([float("inf"), 1.0], dtype=torch.float64)).sum().backward(retain_graph=True)
    batch = rollout.env.batch
    with pytest.raises(ValueError, match="obs_grad must be a Warp array of shape"):
        batch.vjp_step(0, wp.zeros(3, dtype=wp.float32), None)
    with pytest.raises(ValueError, match="dtype float64"):
        batch.vjp_step(0, None, wp.zeros(2, dtype=wp.float32))


@pytest.mark.cuda
@pytest.mark.parametrize("env_id", ["DiffEnvs/Pusher-v0", DOUGH_IDS[0]])
def test_cuda_rollout_is_device_resident_and_equals_the_cpu(cuda_device, env_id):
    """On a GPU the tensors stay there and a rollout (autoreset included), its rewards and its
    gradients equal the CPU's; also when torch runs on a stream of its own (stream ordering)."""
    results = {}
    for device, stream in (("cpu", False), (cuda_device, False), (cuda_device, True)):
        rollout = TorchRollout(make(env_id, device=device, max_episode_steps=3))
        shape = (4, 2, *rollout.env.single_action_space.shape)
        actions = torch.tensor(np.random.default_rng(5).uniform(-1, 1, shape), device=rollout.torch_device,
                               requires_grad=True)
        context = torch.cuda.stream(torch.cuda.Stream()) if stream else contextlib.nullcontext()
        with context:
            rollout.reset(seed=2)
            steps = [rollout.step(actions[t]) for t in range(4)]
            total = sum(reward.sum() for _, reward, *_ in steps) + steps[-1][0].sum()
            total.backward()
            torch.cuda.synchronize() if device != "cpu" else None
        assert all(obs.device == rollout.torch_device and reward.device == rollout.torch_device
                   for obs, reward, *_ in steps)
        results[device, stream] = (torch.stack([r for _, r, *_ in steps]).cpu().numpy(), actions.grad.cpu().numpy())
    cpu_rewards, cpu_grad = results["cpu", False]
    assert np.abs(cpu_grad).max() > 0
    for rewards, grad in (results[cuda_device, False], results[cuda_device, True]):
        np.testing.assert_allclose(rewards, cpu_rewards, rtol=1e-3, atol=1e-5)
        cosine = np.sum(grad * cpu_grad) / (np.linalg.norm(grad) * np.linalg.norm(cpu_grad))
        assert cosine > 0.999
