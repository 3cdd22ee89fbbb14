"""World-steps per second of the Pusher: native vector env against Gymnasium's SyncVectorEnv.

    python benchmarks/bench_pusher.py [--steps 100] [--repeats 3]

Prints, for N = 1, 16, 256 worlds, the native vector env's world-steps per second (with and
without gradient recording) and, at the largest N, SyncVectorEnv over N single envs measured in
the same run, with their ratio. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np


def rate(env, steps: int, repeats: int, num_envs: int) -> float:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(steps, *env.action_space.shape)).astype(np.float32)
    times = []
    for repeat in range(repeats + 1):  # the first run warms up
        env.reset(seed=0)
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        if repeat:
            times.append(time.perf_counter() - start)
    return steps * num_envs / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="steps per episode (<= 100: no resets)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 16, 256])
    args = parser.parse_args()

    import gymnasium as gym
    import warp as wp

    wp.config.log_level = 30
    import diffenvs  # noqa: F401

    print(f"machine: {platform.machine()}, Python {platform.python_version()}, warp {wp.__version__}, CPU backend, "
          f"{args.steps} steps, median of {args.repeats}")
    print(f"{'worlds':>7}{'native, no tape':>18}{'native, recording':>20}")
    native = {}
    for n in args.worlds:
        kwargs = {"num_envs": n, "vectorization_mode": "vector_entry_point", "max_episode_steps": None}
        plain = rate(gym.make_vec("DiffEnvs/Pusher-v0", differentiable=False, **kwargs), args.steps, args.repeats, n)
        taped = rate(gym.make_vec("DiffEnvs/Pusher-v0", differentiable=True, **kwargs), args.steps, args.repeats, n)
        native[n] = plain
        print(f"{n:>7}{plain:>18.0f}{taped:>20.0f}", flush=True)
    n = max(args.worlds)
    sync = gym.vector.SyncVectorEnv(
        [lambda: gym.make("DiffEnvs/Pusher-v0", differentiable=False, max_episode_steps=None) for _ in range(n)]
    )
    sync_rate = rate(sync, args.steps, args.repeats, n)
    print(f"SyncVectorEnv over {n} single envs: {sync_rate:.0f} world-steps/s; native / sync = {native[n] / sync_rate:.1f}x")


if __name__ == "__main__":
    main()
