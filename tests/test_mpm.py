"""The MLS-MPM engine: kernel gradchecks, rollout gradients, contact and plasticity behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp
from warp.autograd import gradcheck

from diffenvs.sim.mpm import MPMControl, MPMModel, MPMState, SolverMPM, ToolShape
from diffenvs.sim.mpm.kernels import g2p_gather, make_grid_update, p2g_scatter, von_mises_project, von_mises_project_series


@wp.kernel
def displacement_dot(
    x: wp.array2d(dtype=wp.vec3), x0: wp.array2d(dtype=wp.vec3), weights: wp.array2d(dtype=wp.vec3),
    out: wp.array(dtype=float),
):
    w, p = wp.tid()
    wp.atomic_add(out, 0, wp.dot(x[w, p] - x0[w, p], weights[w, p]))


def unlisted():
    """The grid-update kernel's node-list arguments for a launch over a box (the list unused)."""
    return [wp.zeros(1, dtype=wp.int32), wp.zeros(1, dtype=wp.int32), 0]


def spent(v):
    """The grid-update kernel's consumed-momentum and -mass outputs (unused outside mode 2): dummies shaped like ``v``."""
    return [wp.zeros(v.shape, dtype=wp.vec3, device=v.device), wp.zeros(v.shape, dtype=float, device=v.device)]


def make_scene(*, softness=0.0, tool_y=0.34, res=16, particles=300, seed=0, yield_stress=50.0, kind="sphere",
               boundary_cells=3):
    from diffenvs.sim.mpm.model import MPMMaterial

    tool = ToolShape(kind, (0.08, 0.03, 0.0) if kind == "torus" else (0.06, 0.08, 0.05), softness=softness)
    model = MPMModel(grid_res=res, tools=(tool,), material=MPMMaterial(yield_stress=yield_stress),
                     boundary_cells=boundary_cells)
    solver = SolverMPM(model)
    rng = np.random.default_rng(seed)
    x0 = (rng.uniform(size=(1, particles, 3)) * [0.3, 0.12, 0.3] + [0.35, 0.15, 0.35]).astype(np.float32)
    return solver, x0, np.array([[[0.5, tool_y, 0.5]]], np.float32)


def rollout(solver, x0, tool_pos, vel, substeps=10, dt=2e-4, seed=1):
    """Weighted displacement of the particles after ``substeps``, and its gradients."""
    worlds, count, _ = x0.shape
    states = [MPMState.zeros(worlds, count, 1, device="cpu", requires_grad=True) for _ in range(substeps + 1)]
    grids = [solver.alloc_grid(worlds, requires_grad=True) for _ in range(substeps)]
    first = states[0]
    first.particle_x.assign(x0)
    first.particle_F.assign(np.tile(np.eye(3, dtype=np.float32), (worlds, count, 1, 1)))
    first.tool_pos.assign(tool_pos)
    first.tool_rot.assign(np.tile(np.array([0, 0, 0, 1], np.float32), (worlds, 1, 1)))
    control = MPMControl.zeros(worlds, 1, device="cpu", requires_grad=True)
    control.tool_vel.assign(np.asarray(vel, np.float32).reshape(worlds, 1, 3))
    rng = np.random.default_rng(seed)
    weights = wp.array(rng.standard_normal((worlds, count, 3)).astype(np.float32) / np.sqrt(count), dtype=wp.vec3)
    start = wp.array(x0, dtype=wp.vec3)
    loss = wp.zeros(1, requires_grad=True)
    tape = wp.Tape()
    with tape:
        for i in range(substeps):
            solver.step(states[i], states[i + 1], control, dt, grids[i])
        wp.launch(displacement_dot, dim=(worlds, count), inputs=[states[-1].particle_x, start, weights], outputs=[loss])
    tape.backward(loss)
    return float(loss.numpy()[0]), control.tool_vel.grad.numpy().reshape(-1), states


@pytest.mark.slow
def test_p2g_gradcheck_elastic_and_yielding():
    solver, _, _ = make_scene()
    rng = np.random.default_rng(0)
    x = wp.array(rng.uniform(0.3, 0.6, size=(1, 3, 3)).astype(np.float32), dtype=wp.vec3, requires_grad=True)
    v = wp.array(rng.standard_normal((1, 3, 3)).astype(np.float32) * 0.1, dtype=wp.vec3, requires_grad=True)
    C = wp.array(rng.standard_normal((1, 3, 3, 3)).astype(np.float32), dtype=wp.mat33, requires_grad=True)
    # Particle 0 at rest (F = I), 1 mildly stretched (elastic), 2 strongly sheared (yields).
    F = np.tile(np.eye(3, dtype=np.float32), (1, 3, 1, 1))
    F[0, 1] += np.diag([0.01, -0.005, 0.002]).astype(np.float32)
    F[0, 2] += np.array([[0.3, 0.2, 0.0], [0.0, -0.25, 0.1], [0.05, 0.0, 0.1]], np.float32)
    F = wp.array(F, dtype=wp.mat33, requires_grad=True)
    res = solver.model.grid_res
    outs = [
        wp.zeros((1, 3), dtype=wp.mat33, requires_grad=True),
        wp.zeros((1, res, res, res), dtype=wp.vec3, requires_grad=True),
        wp.zeros((1, res, res, res), dtype=float, requires_grad=True),
    ]
    assert gradcheck(
        p2g_scatter, dim=(1, 3), inputs=[x, v, C, F, solver.params, 1e-3, solver.whole_grid(1).bounds], outputs=outs,
        eps=1e-3, atol=2e-3, rtol=2e-2, raise_exception=False, show_summary=False,
    )


def test_hand_written_p2g_adjoint_equals_the_generated_one():
    """The solver differentiates p2g by hand (stencil) plus Warp (stress): equal to Warp's adjoint of p2g_scatter."""
    solver, _, _ = make_scene()
    rng = np.random.default_rng(5)
    n, count, res = 2, 6, solver.model.grid_res
    F = np.tile(np.eye(3, dtype=np.float32), (n, count, 1, 1))
    F[:, 1] += np.diag([0.01, -0.005, 0.002]).astype(np.float32)  # elastic
    F[:, 2] += np.array([[0.3, 0.2, 0.0], [0.0, -0.25, 0.1], [0.05, 0.0, 0.1]], np.float32)  # yields
    values = {
        "particle_x": rng.uniform(0.3, 0.6, size=(n, count, 3)), "particle_v": rng.standard_normal((n, count, 3)) * 0.1,
        "particle_C": rng.standard_normal((n, count, 3, 3)), "particle_F": F,
    }
    seeds = {"F": rng.standard_normal((n, count, 3, 3)), "mv": rng.standard_normal((n, res, res, res, 3)),
             "m": rng.standard_normal((n, res, res, res))}

    def gradients(custom: bool) -> dict[str, np.ndarray]:
        state_in = MPMState.zeros(n, count, 1, device="cpu", requires_grad=True)
        state_out = MPMState.zeros(n, count, 1, device="cpu", requires_grad=True)
        for name, value in values.items():
            getattr(state_in, name).assign(value.astype(np.float32))
        grid = solver.alloc_grid(n, requires_grad=True)
        grid.mv.zero_()
        grid.m.zero_()
        tape = wp.Tape()
        with tape:
            if custom:
                solver._scatter(state_in, state_out, grid, 1e-3, solver.whole_grid(n).bounds)
            else:
                wp.launch(p2g_scatter, dim=(n, count), inputs=[state_in.particle_x, state_in.particle_v, state_in.particle_C,
                                                               state_in.particle_F, solver.params, 1e-3,
                                                               solver.whole_grid(n).bounds],
                          outputs=[state_out.particle_F, grid.mv, grid.m])
        state_out.particle_F.grad.assign(seeds["F"].astype(np.float32))
        grid.mv.grad.assign(seeds["mv"].astype(np.float32))
        grid.m.grad.assign(seeds["m"].astype(np.float32))
        tape.backward()
        return {name: getattr(state_in, name).grad.numpy() for name in values}

    mine, reference = gradients(True), gradients(False)
    for name in values:
        scale = np.abs(reference[name]).max()
        assert scale > 0
        np.testing.assert_allclose(mine[name], reference[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("softness, kind", [(0.0, "sphere"), (0.05, "sphere"), (0.0, "torus"), (0.05, "torus")])
def test_grid_update_gradcheck_with_tool_contact(softness, kind):
    # No walls (boundary_cells=0): this checks the tool; nodes fall onto it at about 1 unit/s.
    solver, _, _ = make_scene(res=6, boundary_cells=0, softness=softness, kind=kind)
    kernel = make_grid_update(1)
    rng = np.random.default_rng(1)
    shape = (1, 6, 6, 6)
    m_np = rng.uniform(0.5, 1.0, size=shape).astype(np.float32) * 0.01
    v_np = np.array([0.1, -1.0, 0.05], np.float32) + 0.2 * rng.standard_normal((*shape, 3)).astype(np.float32)
    mv = wp.array(v_np * m_np[..., None], dtype=wp.vec3, requires_grad=True)
    m = wp.array(m_np, dtype=float, requires_grad=True)
    pos = wp.array(np.array([[[0.5, 0.45, 0.5]]], np.float32), dtype=wp.vec3, requires_grad=True)
    rot = wp.array(np.array([[[0.0, 0.0, 0.0, 1.0]]], np.float32), dtype=wp.quat, requires_grad=True)
    vel = wp.array(np.array([[[0.2, -0.5, 0.1]]], np.float32), dtype=wp.vec3, requires_grad=True)
    omega = wp.array(np.array([[[0.0, 0.3, 0.0]]], np.float32), dtype=wp.vec3, requires_grad=True)
    out = wp.zeros(shape, dtype=wp.vec3, requires_grad=True)
    assert gradcheck(
        kernel, dim=shape,
        inputs=[mv, m, pos, rot, vel, omega, solver.tool_kind, solver.tool_size, solver.tool_friction,
                solver.tool_softness, solver.params, 1e-3, wp.vec3i(0, 0, 0), solver.whole_grid(1).bounds, *unlisted()],
        outputs=[out, *spent(out)], eps=1e-4, atol=2e-3, rtol=2e-2, raise_exception=False, show_summary=False,
        input_output_mask=[("grid_mv", "grid_v"), ("tool_pos", "grid_v"), ("tool_vel", "grid_v")],
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_hand_written_mass_scatter_adjoint_equals_the_generated_one(weighted):
    """scatter_mass (the loss's grid mass) is differentiated by p2g_mass_adjoint: equal to Warp's adjoint."""
    from diffenvs.sim.mpm.kernels import p2g_mass

    solver, _, _ = make_scene(res=10)
    rng = np.random.default_rng(8)
    n, count = 2, 30
    x_np = rng.uniform(0.2, 0.8, size=(n, count, 3)).astype(np.float32)
    weights_np = rng.uniform(0.5, 1.5, size=(n, count)).astype(np.float32)
    seed = rng.standard_normal((n, 10, 10, 10)).astype(np.float32)
    results = []
    for custom in (True, False):
        x = wp.array(x_np, dtype=wp.vec3, requires_grad=True)
        weights = wp.array(weights_np, dtype=float, requires_grad=weighted)
        grid_m = wp.zeros((n, 10, 10, 10), dtype=float, requires_grad=True)
        tape = wp.Tape()
        with tape:
            if custom:
                solver.scatter_mass(x, grid_m, weights)
            else:
                wp.launch(p2g_mass, dim=(n, count), inputs=[x, weights, solver.params], outputs=[grid_m])
        grid_m.grad.assign(seed)
        tape.backward()
        results.append((grid_m.numpy(), x.grad.numpy(), weights.grad.numpy() if weighted else np.zeros(1)))
    for mine, reference in zip(*results):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5 * max(np.abs(reference).max(), 1e-12))
    assert np.abs(results[1][1]).max() > 0


@pytest.mark.parametrize("softness, kind", [(0.0, "sphere"), (0.1, "sphere"), (0.05, "torus")])
def test_hand_written_grid_update_adjoint_equals_the_generated_one(softness, kind):
    """The solver differentiates the grid update by hand where no tool or wall acts and by Warp over a
    list of the other nodes: together equal to Warp's adjoint of the whole kernel (nodes in the tool,
    in its soft band, at the walls, empty and untouched; a sub-box of the grid as the active region)."""
    solver, _, _ = make_scene(res=12, boundary_cells=2, softness=softness, kind=kind)
    rng = np.random.default_rng(7)
    n, res = 2, 12
    origin, box = (1, 0, 2), (10, 11, 9)
    m_np = rng.uniform(0.5, 1.0, size=(n, res, res, res)).astype(np.float32) * 0.01
    m_np[rng.uniform(size=m_np.shape) < 0.2] = 0.0  # empty nodes
    v_np = np.array([0.1, -1.0, 0.05], np.float32) + 0.5 * rng.standard_normal((n, res, res, res, 3)).astype(np.float32)
    seed = rng.standard_normal((n, res, res, res, 3)).astype(np.float32)
    bounds = solver.region_of_box(n, (origin, box)).bounds

    def gradients(custom: bool) -> dict[str, np.ndarray]:
        grid = solver.alloc_grid(n, requires_grad=True)
        grid.mv.assign(v_np * m_np[..., None])
        grid.m.assign(m_np)
        grid.v.zero_()
        for array in (grid.mv.grad, grid.m.grad):
            array.zero_()
        state = MPMState.zeros(n, 1, 1, device="cpu", requires_grad=True)
        state.tool_pos.assign(np.array([[[0.5, 0.45, 0.5]], [[0.4, 0.3, 0.55]]], np.float32))
        state.tool_rot.assign(np.tile(np.array([0.0, 0.0, 0.0, 1.0], np.float32), (n, 1, 1)))
        control = MPMControl.zeros(n, 1, device="cpu", requires_grad=True)
        control.tool_vel.assign(np.array([[[0.2, -0.5, 0.1]], [[-0.3, 0.2, 0.0]]], np.float32))
        control.tool_omega.assign(np.array([[[0.0, 0.3, 0.0]], [[0.1, 0.0, -0.2]]], np.float32))
        tape = wp.Tape()
        with tape:
            if custom:
                solver._update_grid(state, control, grid, 1e-3, wp.vec3i(*origin), (n, *box), bounds)
            else:
                wp.launch(solver._grid_update, dim=(n, *box),
                          inputs=[grid.mv, grid.m, state.tool_pos, state.tool_rot, control.tool_vel, control.tool_omega,
                                  solver.tool_kind, solver.tool_size, solver.tool_friction, solver.tool_softness,
                                  solver.params, 1e-3, wp.vec3i(*origin), bounds, *unlisted()], outputs=[grid.v, *spent(grid.v)])
        grid.v.grad.assign(seed)
        tape.backward()
        return {"v": grid.v.numpy(), "mv": grid.mv.grad.numpy(), "m": grid.m.grad.numpy(),
                "tool_pos": state.tool_pos.grad.numpy(), "tool_vel": control.tool_vel.grad.numpy(),
                "tool_omega": control.tool_omega.grad.numpy()}

    mine, reference = gradients(True), gradients(False)
    listed = int(solver._node_list(solver.alloc_grid(n, requires_grad=False))[0].numpy()[0])
    assert 0 < listed < 0.5 * n * np.prod(box)  # both paths were taken
    for name in reference:
        scale = np.abs(reference[name]).max()
        assert scale > 0, name
        np.testing.assert_allclose(mine[name], reference[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def test_g2p_gradcheck():
    solver, _, _ = make_scene(res=6, boundary_cells=1)
    rng = np.random.default_rng(2)
    x = wp.array(rng.uniform(0.3, 0.6, size=(1, 3, 3)).astype(np.float32), dtype=wp.vec3, requires_grad=True)
    gv = wp.array(rng.standard_normal((1, 6, 6, 6, 3)).astype(np.float32), dtype=wp.vec3, requires_grad=True)
    outs = [wp.zeros((1, 3), dtype=t, requires_grad=True) for t in (wp.vec3, wp.vec3, wp.mat33)]
    assert gradcheck(
        g2p_gather, dim=(1, 3), inputs=[x, gv, solver.params, 1e-3, solver.whole_grid(1).bounds], outputs=outs,
        eps=1e-3, atol=2e-3, rtol=2e-2, raise_exception=False, show_summary=False,
    )


def test_hand_written_g2p_adjoint_equals_the_generated_one():
    """The solver differentiates g2p with g2p_gather_adjoint: it must equal Warp's own adjoint."""
    from diffenvs.sim.mpm.kernels import g2p_gather_adjoint

    solver, _, _ = make_scene(res=8, boundary_cells=1)
    rng = np.random.default_rng(4)
    n, count = 2, 40
    x = wp.array(rng.uniform(0.25, 0.75, size=(n, count, 3)).astype(np.float32), dtype=wp.vec3, requires_grad=True)
    gv = wp.array(rng.standard_normal((n, 8, 8, 8, 3)).astype(np.float32), dtype=wp.vec3, requires_grad=True)
    outs = [wp.zeros((n, count), dtype=t, requires_grad=True) for t in (wp.vec3, wp.vec3, wp.mat33)]
    seeds = [rng.standard_normal(o.grad.numpy().shape).astype(np.float32) for o in outs]
    tape = wp.Tape()
    with tape:
        wp.launch(g2p_gather, dim=(n, count), inputs=[x, gv, solver.params, 1e-2, solver.whole_grid(n).bounds], outputs=outs)
    for o, seed in zip(outs, seeds):
        o.grad.assign(seed)
    tape.backward()
    adj = [wp.array(seed, dtype=o.dtype) for o, seed in zip(outs, seeds)]
    mine_x, mine_g = wp.zeros_like(x), wp.zeros_like(gv)
    wp.launch(g2p_gather_adjoint, dim=(n, count), inputs=[x, gv, solver.params, 1e-2, solver.whole_grid(n).bounds, *adj], outputs=[mine_x, mine_g])
    np.testing.assert_allclose(mine_x.numpy(), x.grad.numpy(), rtol=1e-4, atol=1e-3 * np.abs(x.grad.numpy()).max())
    np.testing.assert_allclose(mine_g.numpy(), gv.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_rollout_tool_gradient_matches_finite_differences():
    """A soft sphere pressing into dough: tape vs central differences (float32, 10 substeps)."""
    solver, x0, tool = make_scene(softness=0.03)
    vel = np.array([0.3, -1.0, 0.2])
    _, grad, _ = rollout(solver, x0, tool, vel)
    direction = np.array([0.5, -0.7, 0.3])
    eps = 0.05
    fd = (rollout(solver, x0, tool, vel + eps * direction)[0] - rollout(solver, x0, tool, vel - eps * direction)[0]) / (2 * eps)
    assert abs(fd) > 1e-5
    assert grad @ direction == pytest.approx(fd, rel=0.05)


def test_hard_tool_out_of_reach_gives_zero_gradient_and_softness_fixes_it():
    solver, x0, tool = make_scene(tool_y=0.45)  # 0.12 above the dough: no contact in 10 substeps
    _, grad, _ = rollout(solver, x0, tool, np.array([0.0, -0.5, 0.0]))
    assert np.all(grad == 0.0)
    solver, x0, tool = make_scene(tool_y=0.45, softness=0.2)
    _, grad, _ = rollout(solver, x0, tool, np.array([0.0, -0.5, 0.0]))
    assert np.abs(grad).max() > 0.0


def test_dough_stays_put_at_rest_and_yields_under_a_press():
    solver, x0, tool = make_scene(tool_y=0.6, particles=400)
    _, _, states = rollout(solver, x0, tool, np.zeros(3), substeps=20)
    x = states[-1].particle_x.numpy()
    assert np.all(np.isfinite(x))
    assert np.abs(x - x0).max() < 0.01  # resting dough barely moves in 4 ms

    solver, x0, tool = make_scene(tool_y=0.3, particles=400, yield_stress=5.0)
    _, _, states = rollout(solver, x0, tool, np.array([0.0, -2.0, 0.0]), substeps=40)
    F = states[-1].particle_F.numpy()[0]
    sig = np.linalg.svd(F, compute_uv=False)
    assert np.all(np.isfinite(sig)) and np.all(sig > 0)
    hencky = np.log(sig)
    deviatoric = np.linalg.norm(hencky - hencky.mean(axis=1, keepdims=True), axis=1)
    mu = solver.model.material.mu
    assert deviatoric.max() <= 5.0 / (2 * mu) * 1.05  # the return mapping holds the yield surface
    assert states[-1].particle_x.numpy()[0, :, 1].min() < x0[0, :, 1].min() + 0.02


def test_active_region_step_equals_whole_grid_step_and_its_gradient():
    """A step over each world's active region (cleared, updated and read there only, gradients cleared
    there only) on grids full of stale values and gradients gives the states and gradients of a step
    over the whole of uninitialised ones, in every world, both with a host box (stored compactly: the
    rest of the grid's memory is never touched) and without one (CUDA's path: whole-grid launches whose
    threads skip the nodes outside their world's region)."""
    solver, x0, tool_pos = make_scene(res=24, particles=200, tool_y=0.3, softness=0.02)
    x0 = np.concatenate([x0, x0[:, ::-1] + np.float32(0.02)])  # two worlds, particles in another order
    tool_pos = np.concatenate([tool_pos, tool_pos + np.float32(0.01)])
    results = []
    for mode in ("whole", "box", "device"):  # device: no host box, whole-grid launches that skip other nodes (CUDA's path)
        use_region = mode != "whole"
        worlds, count, _ = x0.shape
        states = [MPMState.zeros(worlds, count, 1, device="cpu", requires_grad=True) for _ in range(4)]
        grids = [solver.alloc_grid(worlds, requires_grad=True) for _ in range(3)]
        for grid in grids if use_region else []:  # stale values everywhere, as left by earlier steps
            grid.mv.fill_(wp.vec3(3.0, -2.0, 1.0))
            grid.m.fill_(5.0)
            grid.v.fill_(wp.vec3(-4.0, 4.0, 2.0))
            for array in (grid.mv.grad, grid.m.grad, grid.v.grad):
                array.fill_(7.0)
        states[0].particle_x.assign(x0)
        states[0].particle_F.assign(np.tile(np.eye(3, dtype=np.float32), (worlds, count, 1, 1)))
        states[0].tool_pos.assign(tool_pos)
        states[0].tool_rot.assign(np.tile(np.array([0, 0, 0, 1], np.float32), (worlds, 1, 1)))
        control = MPMControl.zeros(worlds, 1, device="cpu", requires_grad=True)
        control.tool_vel.assign(np.array([[[0.3, -1.0, 0.2]], [[-0.2, -1.0, 0.1]]], np.float32))
        region = solver.active_region(states[0], 3 * 2e-4, extra_speed=1.0, host_box=mode == "box") if use_region else None
        if mode == "box":
            assert np.prod(region.box[1]) < 0.5 * 24**3  # a real sub-box
        tape = wp.Tape()
        with tape:
            for i in range(3):
                solver.step(states[i], states[i + 1], control, 2e-4, grids[i], region)
        states[-1].particle_x.grad.fill_(1.0)
        tape.backward()
        results.append((states[-1].particle_x.numpy(), states[0].particle_x.grad.numpy(), control.tool_vel.grad.numpy()))
        if mode == "box":
            box = int(np.prod(region.box[1]))
            m = grids[0].m.numpy().reshape(worlds, -1)
            assert np.all(m[:, box:] == 5.0)  # beyond the compact box: untouched
            nodes = np.indices(region.box[1]).reshape(3, -1).T + region.box[0]  # in the compact box's order
            bounds = region.bounds.numpy()
            outside = 0
            for w in range(worlds):  # each world's own region: cleared, then the mass; the rest of the box untouched
                inside = np.all((nodes >= bounds[w, 0]) & (nodes <= bounds[w, 1] + 2), axis=1)
                assert np.all(m[w, :box][inside] != 5.0) and np.all(m[w, :box][~inside] == 5.0)
                np.testing.assert_allclose(m[w, :box][inside].sum(), solver.model.particle_mass * count, rtol=1e-4)
                outside += int((~inside).sum())
            assert outside > 0  # the worlds' regions differ: each is tighter than the box holding both
            assert np.all(grids[0].v.grad.numpy().reshape(worlds, -1, 3)[:, box:] == 7.0)
    for whole, *regional in zip(*results):
        for values in regional:
            np.testing.assert_allclose(values, whole, rtol=1e-5, atol=1e-6)
    assert np.abs(results[0][2]).max() > 0  # the tool touches the dough
    with pytest.raises(ValueError, match="region"):
        solver.step(states[0], states[1], control, 2e-4, grids[0], ((0, 0, 0), (2, 24, 24)))


def test_grid_region_views_are_compact_cached_and_checked():
    from diffenvs.sim.mpm import MPMGrid

    grid = MPMGrid.empty(2, 8, device="cpu", requires_grad=True)
    grid.m.fill_(-1.0)
    box = grid.region((2, 3, 1), (3, 4, 5))
    assert grid.region((2, 3, 1), (3, 4, 5)) is box  # cached
    assert box.m.grad is not None and box.m.grad.strides == box.m.strides

    @wp.kernel
    def write_nodes(m: wp.array4d(dtype=float), origin: wp.vec3i):
        w, i, j, k = wp.tid()
        m[w, origin[0] + i, origin[1] + j, origin[2] + k] = float(1000 * w + 100 * i + 10 * j + k)

    wp.launch(write_nodes, dim=(2, 3, 4, 5), inputs=[box.m, wp.vec3i(2, 3, 1)], device="cpu")
    raw = grid.m.numpy().reshape(2, -1)
    expected = 1000 * np.arange(2)[:, None, None, None] + (100 * np.arange(3)[:, None, None] + 10 * np.arange(4)[:, None]
                                                           + np.arange(5))
    np.testing.assert_array_equal(raw[:, :60], expected.reshape(2, -1))  # node (i, j, k) at ((i*4)+j)*5+k
    assert np.all(raw[:, 60:] == -1.0)
    for bad in [((0, 0, 0), (9, 1, 1)), ((-1, 0, 0), (2, 2, 2)), ((6, 6, 6), (3, 3, 3)), ((0, 0, 0), (0, 2, 2))]:
        with pytest.raises(ValueError, match="box"):
            grid.region(*bad)


def test_worlds_are_independent():
    solver, x0, tool = make_scene(softness=0.03)
    vel = np.array([0.3, -1.0, 0.2])
    loss_single, grad_single, _ = rollout(solver, x0, tool, vel)
    batch_x0 = np.concatenate([x0, x0 + np.float32(0.01)])
    batch_tool = np.concatenate([tool, tool + np.float32(0.05)])
    _, grad_batch, states = rollout(solver, batch_x0, batch_tool, np.stack([vel, -vel]))
    _, _, single_states = rollout(solver, x0, tool, vel)
    np.testing.assert_array_equal(states[-1].particle_x.numpy()[0], single_states[-1].particle_x.numpy()[0])
    np.testing.assert_array_equal(grad_batch[:3], grad_single)
    assert not np.array_equal(grad_batch[3:], grad_single)
    assert np.isfinite(loss_single)


def test_bad_tools_and_materials_raise():
    from diffenvs.sim.mpm.model import MPMMaterial

    with pytest.raises(ValueError, match="kind"):
        ToolShape("cone", (0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="poisson"):
        MPMMaterial(poisson_ratio=0.5)
    with pytest.raises(ValueError, match="grid_res"):
        MPMModel(grid_res=4)
    solver, _, _ = make_scene()
    with pytest.raises(ValueError, match="softness"):
        solver.set_tool_softness([0.1, 0.2])


def test_grid_update_gradcheck_walls_and_floor():
    """Nodes sliding into the floor and a side wall, away from the friction cone's kink."""
    solver, _, _ = make_scene(res=6, boundary_cells=1, tool_y=5.0)  # the tool is far away
    kernel = make_grid_update(1)
    rng = np.random.default_rng(3)
    shape = (1, 6, 6, 6)
    m_np = rng.uniform(0.5, 1.0, size=shape).astype(np.float32) * 0.01
    v_np = np.array([-1.0, -0.5, 0.8], np.float32) + 0.1 * rng.standard_normal((*shape, 3)).astype(np.float32)
    mv = wp.array(v_np * m_np[..., None], dtype=wp.vec3, requires_grad=True)
    m = wp.array(m_np, dtype=float, requires_grad=True)
    tool = [wp.array(np.array([[[0.5, 5.0, 0.5]]], np.float32), dtype=wp.vec3),
            wp.array(np.array([[[0.0, 0.0, 0.0, 1.0]]], np.float32), dtype=wp.quat),
            wp.zeros((1, 1), dtype=wp.vec3), wp.zeros((1, 1), dtype=wp.vec3)]
    out = wp.zeros(shape, dtype=wp.vec3, requires_grad=True)
    assert gradcheck(
        kernel, dim=shape,
        inputs=[mv, m, *tool, solver.tool_kind, solver.tool_size, solver.tool_friction,
                solver.tool_softness, solver.params, 1e-3, wp.vec3i(0, 0, 0), solver.whole_grid(1).bounds, *unlisted()],
        outputs=[out, *spent(out)], eps=1e-4, atol=2e-3, rtol=2e-2, raise_exception=False, show_summary=False,
        input_output_mask=[("grid_mv", "grid_v"), ("grid_m", "grid_v")],
    )


def test_cheap_yield_bound_never_passes_a_yielding_state_as_elastic():
    """The SVD-free bound settles most small strains as elastic and never one that yields."""
    from diffenvs.sim.mpm.kernels import elastic_by_bound

    @wp.kernel
    def settled(F: wp.array(dtype=wp.mat33), mu: float, ys: float, out: wp.array(dtype=float)):
        i = wp.tid()
        out[i] = elastic_by_bound(F[i], mu, ys)

    rng = np.random.default_rng(0)
    scales = np.repeat([1e-4, 3e-3, 1e-2, 3e-2, 0.1], 200)
    F = np.eye(3) + scales[:, None, None] * rng.standard_normal((scales.size, 3, 3))
    out = wp.zeros(scales.size, dtype=float)
    mu, ys = 2000.0, 50.0
    wp.launch(settled, dim=scales.size, inputs=[wp.array(F.astype(np.float32), dtype=wp.mat33), mu, ys], outputs=[out])
    sig = np.linalg.svd(F, compute_uv=False)
    e = np.log(sig)
    excess = np.linalg.norm(e - e.mean(axis=1, keepdims=True), axis=1) - ys / (2 * mu)
    elastic = out.numpy() == 1.0
    clear = np.abs(excess) > 1e-4  # float32 against float64: skip states on the surface itself
    assert not np.any(elastic & clear & (excess > 0))
    assert elastic.sum() > 100 and np.sum(excess > 0) > 100 and np.sum(~elastic & (excess < 0)) > 0  # every path


def test_plastic_projection_matches_the_svd_return_mapping():
    """One SVD decides and projects: yielding states land on the yield surface, the others are returned as they are."""
    from diffenvs.sim.mpm.kernels import von_mises_project

    @wp.kernel
    def project(F: wp.array(dtype=wp.mat33), mu: float, ys: float, out: wp.array(dtype=wp.mat33)):
        i = wp.tid()
        out[i] = von_mises_project(F[i], mu, ys)

    rng = np.random.default_rng(1)
    scales = np.repeat([1e-3, 1e-2, 3e-2, 0.1], 100)
    F = (np.eye(3) + scales[:, None, None] * rng.standard_normal((scales.size, 3, 3))).astype(np.float32)
    mu, ys = 2000.0, 50.0
    out = wp.zeros(scales.size, dtype=wp.mat33)
    wp.launch(project, dim=scales.size, inputs=[wp.array(F, dtype=wp.mat33), mu, ys], outputs=[out])
    got = out.numpy().astype(np.float64)
    U, sig, Vt = np.linalg.svd(F.astype(np.float64))
    e = np.log(sig)
    e_hat = e - e.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(e_hat, axis=1)
    excess = norm - ys / (2 * mu)
    e_new = e - e_hat * (np.maximum(excess, 0) / norm)[:, None]
    expected = U @ (np.exp(e_new)[:, :, None] * Vt)
    clear = np.abs(excess) > 1e-4
    np.testing.assert_allclose(got[clear], expected[clear], atol=2e-5)
    assert np.sum(clear & (excess > 0)) > 50 and np.sum(clear & (excess < 0)) > 50
    np.testing.assert_array_equal(got[excess < -1e-4], F[excess < -1e-4])  # exactly unchanged



def _reference_projection(F: np.ndarray, mu: float, ys: float) -> np.ndarray:
    """The von Mises return mapping on the Hencky strain in float64, through numpy's SVD."""
    U, sig, Vt = np.linalg.svd(F.astype(np.float64))
    e = np.log(np.maximum(sig, 0.05))
    e_hat = e - e.mean()
    norm = np.sqrt(e_hat @ e_hat + 1e-20)
    excess = norm - ys / (2 * mu)
    return U @ np.diag(np.exp(e - e_hat * max(excess, 0.0) / norm)) @ Vt


@wp.kernel
def _project_with(F: wp.array(dtype=wp.mat33), mu: float, ys: float, series: int, out: wp.array(dtype=wp.mat33)):
    i = wp.tid()
    if series == 1:
        out[i] = von_mises_project_series(F[i], mu, ys)
    else:
        out[i] = von_mises_project(F[i], mu, ys)


def _uniaxial(rng, count, strain):
    """Deformations with two equal principal stretches (uniaxial squeezing), randomly rotated."""
    states = []
    for _ in range(count):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        r, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        states.append(q @ np.diag([1.0 - strain, 1.0 + strain / 2, 1.0 + strain / 2]) @ r)
    return np.array(states)


def test_series_return_mapping_is_the_svd_mapping_closer_to_float64():
    """The series mapping lands where float64's SVD mapping does (closer than float32's svd3, at
    repeated stretches too), leaves elastic states untouched and falls back to the SVD beyond its radius."""
    rng = np.random.default_rng(3)
    mu, ys = 2000.0, 50.0  # yield strain 0.0125
    scales = np.repeat([1e-3, 1e-2, 2e-2, 3e-2], 100)
    F = np.concatenate([np.eye(3) + scales[:, None, None] * rng.standard_normal((scales.size, 3, 3)),
                        _uniaxial(rng, 100, 0.03)]).astype(np.float32)
    big = (np.eye(3) + 0.3 * rng.standard_normal((100, 3, 3))).astype(np.float32)
    big = big[np.linalg.det(big) > 0.2]
    out = {}
    for series in (0, 1):
        result = wp.zeros(len(F) + len(big), dtype=wp.mat33)
        wp.launch(_project_with, dim=result.shape[0], inputs=[wp.array(np.concatenate([F, big]), dtype=wp.mat33), mu, ys,
                                                              series], outputs=[result])
        out[series] = result.numpy().astype(np.float64)
    expected = np.array([_reference_projection(f, mu, ys) for f in F])
    moved = np.abs(expected - F).max(axis=(1, 2)) > 1e-5
    assert moved.sum() > 150 and (~moved).sum() > 100  # both paths, and the uniaxial states yield
    series_error = np.abs(out[1][:len(F)] - expected).max(axis=(1, 2))
    svd_error = np.abs(out[0][:len(F)] - expected).max(axis=(1, 2))
    b = F @ F.transpose(0, 2, 1) / np.linalg.det(F)[:, None, None] ** (2 / 3)
    inside = np.linalg.norm(b - np.eye(3), axis=(1, 2)) < 0.095  # the series' radius (0.1), off float32's edge
    assert (inside & moved).sum() > 150 and series_error[inside].max() < 5e-7 and svd_error[inside].max() > 1e-6
    assert series_error.max() <= svd_error.max()  # outside: the SVD's own
    np.testing.assert_array_equal(out[1][:len(F)][~moved], F[~moved])  # elastic: exactly unchanged
    np.testing.assert_array_equal(out[1][len(F):], out[0][len(F):])  # beyond the radius: the SVD's mapping itself



def test_the_solver_compiles_the_chosen_return_mapping_only():
    """Each return mapping has its own scatter and projection kernels (no run-time branch); a bad name raises."""
    from diffenvs.sim.mpm.kernels import p2g_scatter_series, plastic_projection, plastic_projection_series

    series, _, _ = make_scene()  # the default
    assert series._p2g_scatter is p2g_scatter_series and series._plastic_projection is plastic_projection_series
    svd = SolverMPM(series.model, SolverMPM.Config(return_mapping="svd"))
    assert svd._p2g_scatter is p2g_scatter and svd._plastic_projection is plastic_projection
    with pytest.raises(ValueError, match=r"return_mapping must be one of \['svd', 'series'\], got 'eig'"):
        SolverMPM.Config(return_mapping="eig")
    # The dough config's Literal names the solver's mappings, the same default first.
    import dataclasses
    import typing

    from diffenvs.sim.mpm.solver import RETURN_MAPPINGS
    from diffenvs.tasks.dough.config import DoughConfig

    assert typing.get_args(typing.get_type_hints(DoughConfig)["return_mapping"]) == RETURN_MAPPINGS
    default = {f.name: f.default for f in dataclasses.fields(DoughConfig)}["return_mapping"]
    assert default == SolverMPM.Config().return_mapping


def test_series_return_mapping_gradient_is_exact_where_two_stretches_meet():
    """The series mapping's adjoint (Warp's, generated) against float64 central differences of the
    reference mapping, at uniaxial yielding states where the SVD's adjoint loses accuracy."""
    @wp.kernel
    def weighted(F: wp.array(dtype=wp.mat33), W: wp.array(dtype=wp.mat33), mu: float, ys: float, out: wp.array(dtype=float)):
        i = wp.tid()
        wp.atomic_add(out, 0, wp.ddot(W[i], von_mises_project_series(F[i], mu, ys)))

    rng = np.random.default_rng(4)
    mu, ys = 2000.0, 50.0
    F = _uniaxial(rng, 8, 0.03)
    W = rng.standard_normal(F.shape)
    for f, w in zip(F, W):
        Fw = wp.array(f[None].astype(np.float32), dtype=wp.mat33, requires_grad=True)
        out = wp.zeros(1, dtype=float, requires_grad=True)
        tape = wp.Tape()
        with tape:
            wp.launch(weighted, dim=1, inputs=[Fw, wp.array(w[None].astype(np.float32), dtype=wp.mat33), mu, ys], outputs=[out])
        tape.backward(loss=out)
        adjoint = Fw.grad.numpy()[0]
        numeric = np.zeros((3, 3))
        for i in range(3):
            for j in range(3):
                step = np.zeros((3, 3))
                step[i, j] = 1e-6
                numeric[i, j] = (np.sum(w * _reference_projection(f + step, mu, ys))
                                 - np.sum(w * _reference_projection(f - step, mu, ys))) / 2e-6
        assert np.abs(adjoint - numeric).max() < 1e-3 * np.abs(numeric).max()

def test_grid_update_adjoint_stays_finite_for_nearly_empty_nodes():
    """A node touched only by a stencil's edge (weight ~1e-20) must not give an infinite adjoint."""
    solver, _, _ = make_scene(res=6, boundary_cells=0, tool_y=5.0)
    kernel = make_grid_update(1)
    shape = (1, 6, 6, 6)
    m_np = np.full(shape, 1e-3, np.float32)
    m_np[0, 2, 2, 2] = 1e-25
    mv_np = np.ones((*shape, 3), np.float32) * m_np[..., None]
    mv = wp.array(mv_np, dtype=wp.vec3, requires_grad=True)
    m = wp.array(m_np, dtype=float, requires_grad=True)
    tool = [wp.array(np.array([[[0.5, 5.0, 0.5]]], np.float32), dtype=wp.vec3, requires_grad=True),
            wp.array(np.array([[[0.0, 0.0, 0.0, 1.0]]], np.float32), dtype=wp.quat, requires_grad=True),
            wp.zeros((1, 1), dtype=wp.vec3, requires_grad=True), wp.zeros((1, 1), dtype=wp.vec3, requires_grad=True)]
    out = wp.zeros(shape, dtype=wp.vec3, requires_grad=True)
    tape = wp.Tape()
    with tape:
        wp.launch(kernel, dim=shape, inputs=[mv, m, *tool, solver.tool_kind, solver.tool_size, solver.tool_friction,
                                             solver.tool_softness, solver.params, 1e-3, wp.vec3i(0, 0, 0), solver.whole_grid(1).bounds, *unlisted()], outputs=[out, *spent(out)])
    out.grad.fill_(1.0)
    tape.backward()
    assert np.all(np.isfinite(m.grad.numpy())) and np.all(np.isfinite(mv.grad.numpy()))
    assert np.all(out.numpy()[0, 2, 2, 2] == 0.0)  # treated as empty


def test_active_region_per_world_and_whole_grid_for_a_diverged_world():
    """Each world's region holds its own particles' stencils plus the travel margin; a world with a
    non-finite particle (or one too fast for the grid) gets the whole grid."""
    solver, x0, _ = make_scene(res=24, particles=50)
    worlds = 3
    state = MPMState.zeros(worlds, x0.shape[1], 1, device="cpu", requires_grad=False)
    x = np.concatenate([x0, x0 + np.float32(0.2), x0])
    x[2, 7] = np.nan
    state.particle_x.assign(x)
    region = solver.active_region(state, 1e-3, extra_speed=1.0)
    bounds = region.bounds.numpy()
    top = solver.model.grid_res - 3
    cells = x[:2] / solver.model.dx
    for w in range(2):
        assert np.all(bounds[w, 0] <= np.floor(cells[w].min(axis=0)) - 2)  # the stencil reaches a cell below
        assert np.all(bounds[w, 1] + 2 >= np.ceil(cells[w].max(axis=0)) + 2)
        assert np.all(bounds[w, 1] - bounds[w, 0] < 0.8 * top)  # a real sub-box
    assert np.all(bounds[1, 0] > bounds[0, 0])  # per world: the second blob lies higher
    np.testing.assert_array_equal(bounds[2], [[0, 0, 0], [top] * 3])
    assert region.box == ((0, 0, 0), (24, 24, 24))  # the host box holds every world's region
    state.particle_v.fill_(wp.vec3(1e5, 0.0, 0.0))  # travels past the grid within the step
    np.testing.assert_array_equal(solver.active_region(state, 1e-3).bounds.numpy()[0], [[0, 0, 0], [top] * 3])
    assert solver.active_region(state, 1e-3, host_box=False).box is None


def test_undifferentiated_steps_share_one_grid_and_skip_the_clear():
    """Without gradients the grid update consumes the region's momentum and mass, so the substeps of
    one region share a grid and clear it once: the same states as fresh grids for every substep."""
    solver, x0, tool_pos = make_scene(res=20, particles=150, tool_y=0.3, softness=0.02)
    finals = []
    for shared in (False, True):
        states = [MPMState.zeros(1, x0.shape[1], 1, device="cpu", requires_grad=not shared) for _ in range(5)]
        states[0].particle_x.assign(x0)
        states[0].particle_F.assign(np.tile(np.eye(3, dtype=np.float32), (1, x0.shape[1], 1, 1)))
        states[0].tool_pos.assign(tool_pos)
        states[0].tool_rot.assign(np.array([[[0, 0, 0, 1]]], np.float32))
        control = MPMControl.zeros(1, 1, device="cpu", requires_grad=False)
        control.tool_vel.assign(np.array([[[0.2, -1.0, 0.0]]], np.float32))
        grid = solver.alloc_grid(1, requires_grad=False)
        grid.mv.fill_(wp.vec3(3.0, -2.0, 1.0))  # stale values: the first substep must clear them
        grid.m.fill_(5.0)
        region = solver.active_region(states[0], 4 * 2e-4, extra_speed=1.0)
        for i in range(4):
            step_grid = grid if shared else solver.alloc_grid(1, requires_grad=True)
            solver.step(states[i], states[i + 1], control, 2e-4, step_grid, region)
        finals.append(states[-1].particle_x.numpy())
        if shared:
            box = int(np.prod(region.box[1]))
            assert np.all(grid.m.numpy().reshape(-1)[:box] == 0.0)  # consumed, ready for the next substep
            assert np.all(grid.m.numpy().reshape(-1)[box:] == 5.0)  # outside the box: never touched
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-6, atol=1e-7)


def test_torus_sdf_and_normal():
    """The torus tool: its signed distance at known points, and its normal is the SDF's gradient."""
    from diffenvs.sim.mpm.kernels import tool_normal, tool_sdf

    @wp.kernel
    def evaluate(points: wp.array(dtype=wp.vec3), size: wp.vec3, d: wp.array(dtype=float), n: wp.array(dtype=wp.vec3)):
        i = wp.tid()
        d[i] = tool_sdf(3, size, points[i])
        n[i] = tool_normal(3, size, points[i])

    size = wp.vec3(0.08, 0.02, 0.0)
    rng = np.random.default_rng(0)
    points = np.concatenate([[[0.08, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.05, 0.08], [0.0, 0.0, 0.0]],
                             rng.uniform(-0.12, 0.12, size=(50, 3))]).astype(np.float32)
    d = wp.zeros(len(points), dtype=float)
    n = wp.zeros(len(points), dtype=wp.vec3)
    wp.launch(evaluate, dim=len(points), inputs=[wp.array(points, dtype=wp.vec3), size, d, n])
    ring = np.sqrt(points[:, 0] ** 2 + points[:, 2] ** 2) - 0.08
    expected = np.sqrt(ring**2 + points[:, 1] ** 2) - 0.02
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-5)
    assert d.numpy()[0] == pytest.approx(-0.02, abs=1e-5) and d.numpy()[3] == pytest.approx(0.06, abs=1e-5)
    eps = 1e-3  # the normal points along the SDF's gradient (central differences)
    gradient = np.stack([(np.sqrt((np.sqrt((points[:, 0] + eps * e[0]) ** 2 + (points[:, 2] + eps * e[2]) ** 2) - 0.08) ** 2
                                   + (points[:, 1] + eps * e[1]) ** 2)
                          - np.sqrt((np.sqrt((points[:, 0] - eps * e[0]) ** 2 + (points[:, 2] - eps * e[2]) ** 2) - 0.08) ** 2
                                    + (points[:, 1] - eps * e[1]) ** 2)) / (2 * eps) for e in np.eye(3)], axis=1)
    far = np.linalg.norm(points[:, [0, 2]], axis=1) > 0.01  # away from the axis, where the gradient is defined
    np.testing.assert_allclose(n.numpy()[far], gradient[far], atol=2e-3)
    with pytest.raises(ValueError, match="torus"):
        ToolShape("torus", (0.02, 0.03, 0.0))
