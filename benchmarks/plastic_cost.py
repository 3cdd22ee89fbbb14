"""What the plastic return mapping costs per substep on each dough task, apart from the rest of the scatter.

Records the particle-to-grid inputs (C and F of every particle, every substep) of ``--steps`` env
steps under uniform(-1, 1) random actions (seed 0, as ``profile_grad.py``), then times, on
those same inputs, two one-line kernels: the elastic trial F = (I + dt C) F alone
(:func:`trial_deformation`) and the trial followed by the plastic projection the solver runs
(:func:`updated_deformation`: the SVD-free elastic bound, and for each particle the bound does not
settle one SVD or, with ``--return-mapping series``, the log and exp series). Their difference is the plastic path's cost; the counts say how many particles per
substep the bound settles, how many yield and how many the bound did not settle but did not yield. The
last column times the backward pass's share: Warp's generated adjoint of the solver's projection
kernel (``plastic_projection[_series]``), launched as ``grad()`` launches it, over the yielding
particles alone, per yielding particle. Medians over
``--rounds`` rounds on the process's CPU clock (the work, not the latency: it moves little with
other jobs' load)::

    python benchmarks/plastic_cost.py                                  # RollingPin and TripleMove, default preset
    python benchmarks/plastic_cost.py --tasks RollingPin,TripleMove,Pinch --preset paper --steps 10
    python benchmarks/plastic_cost.py --return-mapping series
"""

from __future__ import annotations

import argparse
import time


def scatter_inputs(env, actions) -> list[tuple]:
    """(C, F, params, dt) of every particle-to-grid launch of an episode of ``actions`` from ``reset(seed=0)``."""
    import warp as wp

    recorded = []
    launch = wp.launch

    def record(kernel, *launch_args, **kwargs):
        if kernel.key in ("p2g_scatter", "p2g_scatter_series"):
            _, _, C, F, params, dt, _ = kwargs["inputs"]
            recorded.append((wp.clone(C), wp.clone(F), params, dt))
        return launch(kernel, *launch_args, **kwargs)

    env.reset(seed=0)
    wp.launch = record  # every module calls wp.launch through the warp namespace
    try:
        for action in actions:
            env.step(action)
    finally:
        wp.launch = launch
    return recorded


def main() -> None:
    from diffenvs.sim.mpm.solver import RETURN_MAPPINGS
    from diffenvs.tasks.dough.config import DoughConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="RollingPin,TripleMove", help="comma-separated dough ids without DiffEnvs/ and -v0")
    parser.add_argument("--preset", default="default", choices=["default", "paper"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--return-mapping", choices=RETURN_MAPPINGS, default=DoughConfig.return_mapping,
                        help="the env option return_mapping (default: the envs' default)")
    args = parser.parse_args()

    import gymnasium as gym
    import numpy as np
    import warp as wp

    import diffenvs  # noqa: F401  (registers the ids)
    from diffenvs.sim.mpm import kernels as K

    @wp.kernel
    def trial_only(C: wp.array2d(dtype=wp.mat33), F: wp.array2d(dtype=wp.mat33), params: K.MPMParams, dt: float,
                   F_out: wp.array2d(dtype=wp.mat33)):
        w, p = wp.tid()
        F_out[w, p] = K.trial_deformation(C[w, p], F[w, p], dt)

    series = args.return_mapping == "series"

    @wp.kernel
    def trial_and_projection(C: wp.array2d(dtype=wp.mat33), F: wp.array2d(dtype=wp.mat33), params: K.MPMParams,
                             dt: float, F_out: wp.array2d(dtype=wp.mat33)):
        w, p = wp.tid()
        F_out[w, p] = wp.static(K.updated_deformation_series if series else K.updated_deformation)(C[w, p], F[w, p], params, dt)

    @wp.kernel
    def classify(C: wp.array2d(dtype=wp.mat33), F: wp.array2d(dtype=wp.mat33), params: K.MPMParams, dt: float,
                 counts: wp.array(dtype=int), yields: wp.array2d(dtype=int)):
        w, p = wp.tid()
        trial = K.trial_deformation(C[w, p], F[w, p], dt)
        yields[w, p] = 0
        if K.elastic_by_bound(trial, params.mu, params.yield_stress) > 0.0:
            wp.atomic_add(counts, 0, 1)
        elif K.differs(K.von_mises_project(trial, params.mu, params.yield_stress), trial):
            wp.atomic_add(counts, 1, 1)
            yields[w, p] = 1
        else:
            wp.atomic_add(counts, 2, 1)

    projection = K.plastic_projection_series if series else K.plastic_projection

    def adjoint_launches(recorded, yields):
        """Per substep with yielding particles, the args of the solver's adjoint launch over them alone."""
        launches = []
        for (C, F, params, dt), flags in zip(recorded, yields):
            index = np.flatnonzero(flags).astype(np.int32)
            if len(index):
                launches.append({
                    "kernel": projection, "dim": len(index), "adjoint": True,
                    "inputs": [wp.array([len(index)], dtype=wp.int32), wp.array(index), C, F, params, dt],
                    "outputs": [wp.empty(C.shape, dtype=wp.mat33)],
                    "adj_inputs": [None, None, wp.zeros_like(C), wp.zeros_like(F), K.MPMParams(), 0.0],
                    "adj_outputs": [wp.ones(C.shape, dtype=wp.mat33)]})
        return launches

    print(f"preset {args.preset}, return mapping {args.return_mapping}, {args.steps} steps of uniform(-1, 1) actions (seed 0), "
          f"{args.rounds} rounds, CPU clock; ms per substep, medians")
    print("| task | particles | trial only | trial + projection | plastic path | settled by the bound | yield | "
          "not settled, no yield | projection adjoint, us per yielding particle |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        env = gym.make(f"DiffEnvs/{task}-v0", preset=args.preset, return_mapping=args.return_mapping).unwrapped
        actions = np.random.default_rng(0).uniform(-1, 1, size=(args.steps, *env.action_space.shape))
        recorded = scatter_inputs(env, actions)
        shape = recorded[0][0].shape
        out = wp.empty(shape, dtype=wp.mat33)
        counts = wp.zeros(3, dtype=int)
        yields = []
        for C, F, params, dt in recorded:
            flags = wp.empty(shape, dtype=int)
            wp.launch(classify, dim=shape, inputs=[C, F, params, dt, counts, flags])
            yields.append(flags.numpy().ravel())
        adjoints = adjoint_launches(recorded, yields)
        yielded = sum(launch["dim"] for launch in adjoints)
        times: dict[str, list[float]] = {"trial": [], "projected": []}
        for kernel in (trial_only, trial_and_projection):  # compile and load first
            wp.launch(kernel, dim=shape, inputs=[*recorded[0], out])
        if adjoints:
            wp.launch(**adjoints[0])
        for _ in range(args.rounds):
            for name, kernel in (("trial", trial_only), ("projected", trial_and_projection)):
                start = time.process_time()
                for inputs in recorded:
                    wp.launch(kernel, dim=shape, inputs=[*inputs, out])
                times[name].append((time.process_time() - start) / len(recorded) * 1e3)
            if adjoints:
                start = time.process_time()
                for launch in adjoints:
                    wp.launch(**launch)
                times.setdefault("adjoint", []).append((time.process_time() - start) / yielded * 1e6)
        adjoint = f"{np.median(times['adjoint']):.3f}" if adjoints else "-"
        trial, projected = float(np.median(times["trial"])), float(np.median(times["projected"]))
        settled, yielding, unsettled_elastic = counts.numpy() / len(recorded)
        print(f"| {task} | {int(np.prod(shape)):,} | {trial:.3f} | {projected:.3f} | {projected - trial:.3f} | "
              f"{settled:.0f} | {yielding:.0f} | {unsettled_elastic:.0f} | {adjoint} |")
        env.close()


if __name__ == "__main__":
    main()
