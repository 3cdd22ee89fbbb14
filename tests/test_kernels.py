"""Kernel-level gradient checks (warp.autograd.gradcheck) at tiny sizes, and CUDA parity."""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from warp.autograd import gradcheck

from diffenvs.sim.rigid2d import Rigid2DModel, SolverRigid2D
from diffenvs.sim.rigid2d.kernels import integrate_pusher_box
from tests.conftest import DOUGH_IDS, TINY_DOUGH, make_unwrapped


def _inputs(device="cpu"):
    # World 0 presses on a face, world 1 on a rounded corner while sliding, world 2 is free.
    pusher = np.array([[-0.078, 0.01], [0.064, 0.043], [0.4, 0.4]])
    pose = np.array([[0.0, 0.0, 0.1], [0.0, 0.0, -0.05], [0.1, -0.1, 1.0]])
    vel = np.array([[0.05, 0.0, 0.2], [0.1, -0.05, 0.5], [0.2, 0.1, -0.3]])
    cmd = np.array([[0.3, 0.05], [-0.2, -0.1], [0.1, 0.0]])
    arrays = [
        wp.array(pusher, dtype=wp.vec2d, device=device, requires_grad=True),
        wp.array(pose, dtype=wp.vec3d, device=device, requires_grad=True),
        wp.array(vel, dtype=wp.vec3d, device=device, requires_grad=True),
        wp.array(cmd, dtype=wp.vec2d, device=device, requires_grad=True),
    ]
    outputs = [
        wp.zeros(3, dtype=wp.vec2d, device=device, requires_grad=True),
        wp.zeros(3, dtype=wp.vec3d, device=device, requires_grad=True),
        wp.zeros(3, dtype=wp.vec3d, device=device, requires_grad=True),
    ]
    return arrays, outputs


def test_integrate_pusher_box_gradcheck():
    solver = SolverRigid2D(Rigid2DModel())
    arrays, outputs = _inputs()
    assert gradcheck(
        integrate_pusher_box, dim=3, inputs=[*arrays, solver.params, wp.float64(0.005)], outputs=outputs,
        eps=1e-7, atol=1e-6, rtol=1e-5, raise_exception=False, show_summary=False,
    )


@pytest.mark.cuda
def test_cuda_matches_cpu(cuda_device):
    """The same episode on CUDA gives the CPU's observations, rewards and gradients."""
    results = []
    for device in ("cpu", cuda_device):
        env = make_unwrapped("DiffEnvs/Pusher-v0", device=device, proximity_weight=0.2)
        env.reset(seed=0)
        rewards = [env.step(np.array([0.8, 0.3]))[1] for _ in range(20)]
        results.append((np.array(rewards), env.grad().actions))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("env_id", DOUGH_IDS)
def test_cuda_dough_matches_cpu(cuda_device, env_id):
    """A dough episode on CUDA (where the solver's adjoints launch over every particle and node
    instead of host-counted lists, and atomics sum in any order) gives the CPU's rewards and
    gradients to float32 accuracy, checkpointed or not."""
    pattern = np.array([0.3, -0.8, 0.2, -0.3, -0.8, 0.2])  # every tool down into the dough, a little sideways
    results = {}
    for device, checkpoint in (("cpu", True), (cuda_device, True), (cuda_device, False)):
        env = make_unwrapped(env_id, device=device, checkpoint=checkpoint, tool_softness=0.02, **TINY_DOUGH)
        env.reset(seed=3)
        action = np.resize(pattern, env.action_space.shape)
        rewards = [env.step(action)[1] for _ in range(4)]
        results[device, checkpoint] = (np.array(rewards), env.grad().actions)
    cpu_rewards, cpu_grad = results["cpu", True]
    assert np.abs(cpu_grad).max() > 0
    for rewards, grad in (results[cuda_device, True], results[cuda_device, False]):
        np.testing.assert_allclose(rewards, cpu_rewards, rtol=1e-3, atol=1e-5)
        cosine = np.sum(grad * cpu_grad) / (np.linalg.norm(grad) * np.linalg.norm(cpu_grad))
        assert cosine > 0.999 and np.linalg.norm(grad) == pytest.approx(np.linalg.norm(cpu_grad), rel=1e-2)
