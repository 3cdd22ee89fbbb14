"""Forward and checkpointed-gradient rates of the dough tasks as ratios to RollingPin's, measured in
interleaved rounds (task after task, round after round) so that load on a shared machine falls on
every task alike: the ratios hold under load where one-task-at-a-time figures do not.

Each round, each task: reset(seed=0), ``--steps`` steps of the same uniform random actions (and,
in ``grad`` mode, ``grad()`` with checkpointing, the env's default); the first round warms up.
Prints medians over rounds (steps per second, and particle-steps per second: the tasks' particle
counts differ at the paper preset) and the ratio of each task's per-particle rate to the first
task's, taken round by round (paired: a load spike that slows one round slows both tasks of it)
with the median and the range over rounds; writes the figures as JSON::

    python benchmarks/task_rates.py                        # every dough task, both presets
    python benchmarks/task_rates.py --tasks RollingPin,Assembly --presets default --rounds 3
    python benchmarks/task_rates.py --clock cpu             # the process's CPU time instead of wall time
    python benchmarks/task_rates.py --tasks RollingPin,TripleMove --presets paper --modes forward --by-kernel

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


def rates(tasks: list[str], preset: str, mode: str, steps: int, rounds: int, clock: str = "wall",
          by_kernel: bool = False, return_mapping: str | None = None) -> dict[str, dict]:
    """Per task: median steps/s, particles, and the per-round ratios of its per-particle rate to the first task's;
    with ``by_kernel`` also each kernel's median time per step (``wp.launch`` timed on the same clock: on the CPU
    backend a launch is synchronous, so that is the kernel's cost plus its launch overhead; the rest is "python")."""
    import collections

    import gymnasium as gym
    import numpy as np
    import warp as wp

    import diffenvs  # noqa: F401  (registers the ids)

    kwargs = {"differentiable": False} if mode == "forward" else {"checkpoint": True}
    if return_mapping is not None:  # None: the envs' default
        kwargs["return_mapping"] = return_mapping
    envs = {task: gym.make(f"DiffEnvs/{task}-v0", preset=preset, **kwargs).unwrapped for task in tasks}
    actions = {task: np.random.default_rng(0).uniform(-0.5, 0.5, size=(steps, *env.action_space.shape))
               for task, env in envs.items()}
    now = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {task: [] for task in tasks}
    kernels: dict[str, collections.defaultdict] = {task: collections.defaultdict(list) for task in tasks}
    launch = wp.launch
    spent: collections.Counter = collections.Counter()

    def timed_launch(kernel, *args, **kwargs):
        begin = now()
        try:
            return launch(kernel, *args, **kwargs)
        finally:
            spent[kernel.key] += now() - begin

    for round_ in range(rounds + 1):
        for task, env in envs.items():
            env.reset(seed=0)
            spent.clear()
            wp.launch = timed_launch if by_kernel else launch
            try:
                start = now()
                for action in actions[task]:
                    env.step(action)
                if mode == "grad":
                    env.grad()
                wp.synchronize()
                elapsed = now() - start
            finally:
                wp.launch = launch
            if round_:
                times[task].append(elapsed)
                for key in (set(spent) | set(kernels[task])) - {"python"}:
                    kernels[task][key].append(spent[key] / steps)
                kernels[task]["python"].append((elapsed - sum(spent.values())) / steps)
    particles = {task: env.task.particle_count for task, env in envs.items()}
    for env in envs.values():
        env.close()
    first = tasks[0]
    out = {}
    for task, seconds in times.items():
        ratios = [particles[task] * t0 / (particles[first] * t) for t0, t in zip(times[first], seconds, strict=True)]
        out[task] = {"steps_per_s": steps / float(np.median(seconds)), "particles": particles[task],
                     "ratio": float(np.median(ratios)), "ratio_range": [float(min(ratios)), float(max(ratios))]}
        if by_kernel:
            out[task]["ms_per_step"] = {key: 1000.0 * float(np.median(values)) for key, values in kernels[task].items()}
    return out


def main() -> None:
    from diffenvs.bench import DOUGH_TASKS, machine
    from diffenvs.sim.mpm.solver import RETURN_MAPPINGS
    from diffenvs.tasks.dough.config import DoughConfig
    from diffenvs.warp_util import quiet_warp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(DOUGH_TASKS), help="comma-separated; ratios are to the first")
    parser.add_argument("--presets", nargs="+", default=["default", "paper"])
    parser.add_argument("--modes", nargs="+", default=["forward", "grad"], choices=["forward", "grad"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: the process's CPU time (robust to other jobs' load; CPU backend only)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed with --by-kernel")
    parser.add_argument("--by-kernel", action="store_true",
                        help="also time every launch: each kernel's ms per step, per task (adds a little overhead)")
    parser.add_argument("--return-mapping", choices=RETURN_MAPPINGS, default=DoughConfig.return_mapping,
                        help="the plasticity's return mapping of every task (the env option return_mapping; "
                             "default: the envs' default)")
    parser.add_argument("--json", default="task_rates.json")
    args = parser.parse_args()
    quiet_warp()
    tasks = args.tasks.split(",")
    figures = {"machine": machine(), "command": " ".join(["python benchmarks/task_rates.py", *sys.argv[1:]]),
               "settings": vars(args), "rates": {}}
    for preset in args.presets:
        for mode in args.modes:
            measured = rates(tasks, preset, mode, args.steps, args.rounds, args.clock, args.by_kernel, args.return_mapping)
            figures["rates"][f"{preset}/{mode}"] = measured
            print(f"\n{preset} preset, {mode} ({args.steps} steps{' and grad()' if mode == 'grad' else ''}), "
                  f"median of {args.rounds} interleaved rounds, {args.clock} clock, return mapping {args.return_mapping}:")
            print(f"| task | steps/s | particles | particle-steps/s | per-particle ratio to {tasks[0]} (range over rounds) |")
            print("|---|---|---|---|---|")
            for task, row in measured.items():
                low, high = row["ratio_range"]
                print(f"| {task} | {row['steps_per_s']:.1f} | {row['particles']} | {row['steps_per_s'] * row['particles']:,.0f} | "
                      f"{row['ratio']:.2f} ({low:.2f}-{high:.2f}) |")
            if args.by_kernel:
                first = measured[tasks[0]]["ms_per_step"]
                keys = sorted(set().union(*(row["ms_per_step"] for row in measured.values())), key=lambda k: -first.get(k, 0.0))
                print(f"\nms per step by kernel (median over rounds):\n| kernel | {' | '.join(tasks)} |\n|---|{'---|' * len(tasks)}")
                for key in keys[:args.top]:
                    print(f"| {key[:48]} | " + " | ".join(f"{row['ms_per_step'].get(key, 0.0):.2f}" for row in measured.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
