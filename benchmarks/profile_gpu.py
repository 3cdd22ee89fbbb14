"""Where a batched dough env step spends its GPU time: every kernel timed with CUDA events.

Runs a native vector env forward (CUDA graphs off, so that each kernel is timed on its own) and
prints the kernels by total time per env step, then times one substep of the solver with the
particles in their stored order (sorted by grid cell) against a random order per world, which
tells how much the scatter's atomic adds to shared nodes cost::

    python benchmarks/profile_gpu.py --preset paper --worlds 64
    python benchmarks/profile_gpu.py --preset default --worlds 4096 --json profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DiffEnvs/Move-v0")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--worlds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    os.environ["DIFFENVS_CUDA_GRAPHS"] = "0"

    import gymnasium as gym
    import numpy as np
    import warp as wp

    wp.config.log_level = 30
    import diffenvs  # noqa: F401

    env = gym.make_vec(args.env, num_envs=args.worlds, vectorization_mode="vector_entry_point", differentiable=False,
                       preset=args.preset, device=args.device, max_episode_steps=None)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, size=(args.steps, *env.action_space.shape))
    for action in actions:  # warm-up: kernels load
        env.step(action)
    wp.synchronize()
    start = time.perf_counter()
    wp.timing_begin(cuda_filter=wp.TIMING_KERNEL | wp.TIMING_MEMSET | wp.TIMING_MEMCPY)
    for action in actions:
        env.step(action)
    results = wp.timing_end()
    wall = (time.perf_counter() - start) / args.steps
    per_kernel: dict[str, list[float]] = collections.defaultdict(list)
    for result in results:
        per_kernel[result.name.split("_cuda_kernel")[0]].append(result.elapsed)
    gpu = sum(sum(v) for v in per_kernel.values()) / args.steps
    rows = sorted(((sum(v) / args.steps, len(v) // args.steps, name) for name, v in per_kernel.items()), reverse=True)
    print(f"{args.env} {args.preset}, {args.worlds} worlds: {wall * 1e3:.2f} ms per env step (wall), "
          f"{gpu:.2f} ms of it in kernels, memsets and copies; {args.worlds / wall:.0f} world-steps/s")
    print(f"  {'ms/step':>9}{'share':>7}{'calls':>7}  kernel")
    for ms, calls, name in rows[: args.top]:
        print(f"  {ms:>9.3f}{ms / gpu:>7.1%}{calls:>7}  {name}")

    # One substep with the particles in stored (cell-sorted) order and in a random order per world.
    task = env.unwrapped.task
    state = env.unwrapped.batch.get_state()
    from diffenvs.sim.mpm import MPMControl, MPMState

    solver = task.solver
    n, p, t = task.world_count, task.particle_count, task.tool_count
    substep = {}
    for order in ("stored", "shuffled"):
        fields = {name: state[name] for name in ("particle_x", "particle_v", "particle_C", "particle_F")}
        if order == "shuffled":
            perm = np.random.default_rng(1).permutation(p)
            fields = {name: value[:, perm] for name, value in fields.items()}
        a, b = (MPMState.zeros(n, p, t, device=args.device, requires_grad=False) for _ in range(2))
        for name, value in fields.items():
            getattr(a, name).assign(value.astype(np.float32))
        a.tool_pos.assign(state["tool_pos"].astype(np.float32))
        a.tool_rot.assign(state["tool_rot"].astype(np.float32))
        control = MPMControl.zeros(n, t, device=args.device, requires_grad=False)
        grid = solver.alloc_grid(n, requires_grad=False)
        region = solver.active_region(a, task.frame_dt, extra_speed=2.0 * task.config.tool_speed, host_box=False)
        for _ in range(3):
            solver.step(a, b, control, task.sim_dt, grid, region)
        wp.synchronize()
        wp.timing_begin(cuda_filter=wp.TIMING_KERNEL)
        repeats = 10
        for _ in range(repeats):
            solver.step(a, b, control, task.sim_dt, grid, region)
        timing = wp.timing_end()
        kernels = collections.defaultdict(float)
        for result in timing:
            kernels[result.name.split("_cuda_kernel")[0]] += result.elapsed / repeats
        substep[order] = dict(kernels)
        print(f"  one substep, particles {order}: {sum(kernels.values()):.3f} ms  "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:4]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"env": args.env, "preset": args.preset, "worlds": args.worlds, "wall_ms_per_step": wall * 1e3,
                       "gpu_ms_per_step": gpu, "kernels_ms_per_step": {name: ms for ms, _, name in rows},
                       "substep_ms": substep}, handle, indent=2)


if __name__ == "__main__":
    main()
