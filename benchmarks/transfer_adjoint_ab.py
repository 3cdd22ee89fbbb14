"""A/B of the transfer adjoints: hand-written (``p2g_adjoint``, ``g2p_gather_adjoint``) against Warp's generated ones.

Times ``grad()`` (the backward pass: checkpointed re-forward plus adjoints) after ``--steps`` env
steps of a dough task at the paper preset, in one process per variant, median of ``--repeats``,
and checks that both give the same gradient::

    python benchmarks/transfer_adjoint_ab.py       # Move, 15 steps, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def measure(variant: str, env_id: str, steps: int, repeats: int) -> dict:
    import gymnasium as gym
    import numpy as np
    import warp as wp

    wp.config.log_level = 30
    import diffenvs  # noqa: F401
    from diffenvs.sim.mpm import solver as mpm_solver
    from diffenvs.sim.mpm.kernels import g2p_gather, p2g_scatter

    if variant == "generated":  # the launches recorded on the tape, differentiated by Warp

        def scatter(self, state_in, state_out, grid, dt, bounds=None):
            wp.launch(
                p2g_scatter, dim=state_in.particle_x.shape,
                inputs=[state_in.particle_x, state_in.particle_v, state_in.particle_C, state_in.particle_F, self.params, dt,
                        bounds],
                outputs=[state_out.particle_F, grid.mv, grid.m], device=self.device,
            )

        def gather(self, state_in, state_out, grid, dt, bounds=None):
            wp.launch(
                g2p_gather, dim=state_in.particle_x.shape,
                inputs=[state_in.particle_x, grid.v, self.params, dt, bounds],
                outputs=[state_out.particle_x, state_out.particle_v, state_out.particle_C], device=self.device,
            )

        mpm_solver.SolverMPM._scatter = scatter
        mpm_solver.SolverMPM._gather = gather
    env = gym.make(env_id, preset="paper").unwrapped
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, *env.action_space.shape))
    times = []
    for _ in range(repeats):
        env.reset(seed=0)
        for action in actions:
            env.step(action)
        start = time.perf_counter()
        grad = env.grad().actions
        times.append(time.perf_counter() - start)
    return {"variant": variant, "median_s": statistics.median(times), "times_s": times, "grad": grad.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DiffEnvs/Move-v0")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=["custom", "generated"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.env, args.steps, args.repeats)))
        return
    import numpy as np

    results = {}
    for variant in ("custom", "generated"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--env", args.env, "--steps", str(args.steps),
                              "--repeats", str(args.repeats)], check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    a, b = (np.array(results[v]["grad"]) for v in ("custom", "generated"))
    print(f"{args.env}, paper preset, backward after {args.steps} steps (median of {args.repeats}):")
    for variant in ("custom", "generated"):
        print(f"  {variant:>9}: {results[variant]['median_s']:.2f} s")
    print(f"  ratio generated / custom: {results['generated']['median_s'] / results['custom']['median_s']:.2f}; "
          f"max gradient difference {np.abs(a - b).max():.2e} (scale {np.abs(b).max():.2e})")


if __name__ == "__main__":
    main()
