"""Where ``grad()`` spends its time: every Warp launch of the backward pass timed by kernel.

On Warp's CPU backend launches are synchronous, so the wall time of each launch is its cost
(on CUDA this script would time launch overhead only; use Nsight there). Prints the kernels of
the backward pass by total time, and the forward's launch time for comparison::

    python benchmarks/profile_grad.py                          # Move, paper preset, 3 steps
    python benchmarks/profile_grad.py --env DiffEnvs/RollingPin-v0 --preset default --steps 10
    python benchmarks/profile_grad.py --no-checkpoint                  # the forward records every substep
    python benchmarks/profile_grad.py --env DiffEnvs/TripleMove-v0 --set return_mapping=series
"""

from __future__ import annotations

import argparse
import collections
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DiffEnvs/Move-v0")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--no-checkpoint", action="store_true", help="record every substep instead of recomputing them")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an env option (repeatable)")
    args = parser.parse_args()

    import gymnasium as gym
    import numpy as np
    import warp as wp

    wp.config.log_level = 30
    import diffenvs  # noqa: F401
    from diffenvs.cli import parse_sets

    options = parse_sets(args.set)
    env = gym.make(args.env, preset=args.preset, checkpoint=not args.no_checkpoint, **options).unwrapped
    actions = np.random.default_rng(0).uniform(-1, 1, size=(args.steps, *env.action_space.shape))

    def rollout() -> None:
        env.reset(seed=0)
        for action in actions:
            env.step(action)

    rollout()
    env.grad()  # compile and allocate everything first
    start = time.perf_counter()
    env.grad()
    parallel_wall = time.perf_counter() - start
    # Timing each launch needs one thread: a checkpointed grad() refills steps on a second one.
    env.unwrapped.batch.parallel_refill = False
    stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    yielding: list[int] = []  # launch sizes of the plastic projection's adjoint: the particles that yield
    launch = wp.launch

    def timed(kernel, *launch_args, **kwargs):
        start = time.perf_counter()
        result = launch(kernel, *launch_args, **kwargs)
        entry = stats[kernel.key + (" [adjoint]" if kwargs.get("adjoint") else "")]
        entry[0] += 1
        entry[1] += time.perf_counter() - start
        if kernel.key.startswith("plastic_projection") and kwargs.get("adjoint"):
            yielding.append(int(np.prod(kwargs["dim"])))
        return result

    wp.launch = timed  # every module calls wp.launch through the warp namespace
    try:
        start = time.perf_counter()
        rollout()
        forward_wall = time.perf_counter() - start
        forward = sum(total for _, total in stats.values())
        forward_stats = dict(stats)
        stats.clear()
        start = time.perf_counter()
        env.grad()
        backward = time.perf_counter() - start
    finally:
        wp.launch = launch
    print(f"{args.env}, preset {args.preset}, {args.steps} steps, checkpoint={env.checkpoint}: forward "
          f"{forward_wall * 1e3:.0f} ms (launches {forward * 1e3:.0f} ms), grad() {backward * 1e3:.0f} ms on one thread "
          f"({backward / forward_wall:.1f}x the forward), {parallel_wall * 1e3:.0f} ms as run (refills on a second thread)")
    substeps = stats.get("p2g_adjoint", [0])[0]
    if substeps:
        print(f"particles that yield: {sum(yielding) / substeps:.1f} per substep on average (of {env.task.particle_count} "
              "per world; the plastic projection's adjoint runs over them alone)")
    for title, table in (("forward", forward_stats), ("grad()", stats)):
        print(f"{title}, by kernel:")
        for key, (count, total) in sorted(table.items(), key=lambda item: -item[1][1])[: args.top]:
            print(f"  {key:<62} {count:>5} launches {total * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
