"""Forward and checkpointed-gradient rates of the dough tasks as ratios to RollingPin's, measured in
interleaved rounds (task after task, round after round) so that load on a shared machine falls on
every task alike: the ratios hold under load where one-task-at-a-time figures do not.

Each round, each task: reset(seed=0), ``--steps`` steps of the same uniform random actions (and,
in ``grad`` mode, ``grad()`` with checkpointing, the env's default); the first round warms up.
Prints medians over rounds (steps per second) and the ratio of each task's rate to the first
task's; writes the figures as JSON::

    python benchmarks/task_rates.py                        # every dough task, both presets
    python benchmarks/task_rates.py --tasks RollingPin,Assembly --presets default --rounds 3
    python benchmarks/task_rates.py --clock cpu             # the process's CPU time instead of wall time

``--clock cpu`` times the work (every thread's CPU seconds, including ``grad()``'s refill thread),
not the latency: on a machine that other jobs share it moves far less with their load than wall
time does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def rates(tasks: list[str], preset: str, mode: str, steps: int, rounds: int, clock: str = "wall") -> dict[str, float]:
    import gymnasium as gym
    import numpy as np
    import warp as wp

    import diffenvs  # noqa: F401  (registers the ids)

    kwargs = {"differentiable": False} if mode == "forward" else {"checkpoint": True}
    envs = {task: gym.make(f"DiffEnvs/{task}-v0", preset=preset, **kwargs).unwrapped for task in tasks}
    actions = {task: np.random.default_rng(0).uniform(-0.5, 0.5, size=(steps, *env.action_space.shape))
               for task, env in envs.items()}
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {task: [] for task in tasks}
    for round_ in range(rounds + 1):
        for task, env in envs.items():
            env.reset(seed=0)
            start = now()
            for action in actions[task]:
                env.step(action)
            if mode == "grad":
                env.grad()
            wp.synchronize()
            if round_:
                times[task].append(now() - start)
    for env in envs.values():
        env.close()
    return {task: steps / float(np.median(seconds)) for task, seconds in times.items()}


def main() -> None:
    from diffenvs.bench import DOUGH_TASKS, machine
    from diffenvs.warp_util import quiet_warp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(DOUGH_TASKS), help="comma-separated; ratios are to the first")
    parser.add_argument("--presets", nargs="+", default=["default", "paper"])
    parser.add_argument("--modes", nargs="+", default=["forward", "grad"], choices=["forward", "grad"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: the process's CPU time (robust to other jobs' load; CPU backend only)")
    parser.add_argument("--json", default="task_rates.json")
    args = parser.parse_args()
    quiet_warp()
    tasks = args.tasks.split(",")
    figures = {"machine": machine(), "command": " ".join(["python benchmarks/task_rates.py", *sys.argv[1:]]),
               "settings": vars(args), "rates": {}}
    for preset in args.presets:
        for mode in args.modes:
            measured = rates(tasks, preset, mode, args.steps, args.rounds, args.clock)
            figures["rates"][f"{preset}/{mode}"] = measured
            print(f"\n{preset} preset, {mode} ({args.steps} steps{' and grad()' if mode == 'grad' else ''}), "
                  f"median of {args.rounds} interleaved rounds, {args.clock} clock:")
            print(f"| task | steps/s | ratio to {tasks[0]} |\n|---|---|---|")
            for task, rate in measured.items():
                print(f"| {task} | {rate:.1f} | {rate / measured[tasks[0]]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
