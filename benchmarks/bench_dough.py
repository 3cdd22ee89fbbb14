"""Speed and memory of the dough tasks: forward rate, 50-step gradient time, peak memory.

Each measurement runs in a fresh process (peak resident memory is per process), the kernels
compiled beforehand. Prints a table and writes JSON::

    python benchmarks/bench_dough.py                    # default and paper presets, 3 repeats
    python benchmarks/bench_dough.py --quick            # default preset, 1 repeat
    python benchmarks/bench_dough.py --json out.json --tasks RollingPin

Figures per task and preset (medians over the repeats):
  forward steps/s     env steps per second with differentiable=False
  grad 50 [s]         one 50-step episode recorded (checkpoint=True) plus grad()
  grad / forward      that time over the differentiable=False forward time of the same episode
  peak RSS ckpt       peak resident memory of a process that takes one such gradient
  peak RSS no ckpt    the same with checkpoint=False (every substep's grids kept on the tape);
                      at the paper preset over a 10-step episode, since 50 steps do not fit
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

HORIZON = 50
NO_CHECKPOINT_HORIZON = {"default": 50, "paper": 10}


def measure(task: str, preset: str, mode: str, repeats: int, horizon: int) -> dict:
    """Run inside the child process: time ``mode`` ('forward' or 'grad') and report peak RSS."""
    import numpy as np
    import warp as wp

    wp.config.log_level = 30
    import gymnasium as gym

    import diffenvs  # noqa: F401

    env_id = f"DiffEnvs/{task}-v0"
    kwargs = {"preset": preset}
    if mode == "forward":
        kwargs["differentiable"] = False
    else:
        kwargs["checkpoint"] = mode == "grad"  # "grad_nockpt": every substep kept on the tape
    env = gym.make(env_id, **kwargs).unwrapped
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.5, 0.5, size=(horizon, *env.action_space.shape))
    times = []
    for repeat in range(repeats + 1):  # the first run warms up (module load, allocation)
        env.reset(seed=0)
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        if mode != "forward":
            env.grad()
        wp.synchronize()
        if repeat > 0:
            times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"seconds": float(np.median(times)), "peak_rss": rss}


def child(task: str, preset: str, mode: str, repeats: int, horizon: int) -> dict:
    command = [sys.executable, __file__, "--child", task, preset, mode, str(repeats), str(horizon)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{task}/{preset}/{mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["RollingPin", "Move", "Shape"])
    parser.add_argument("--presets", nargs="+", default=["default", "paper"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="default preset, one repeat")
    parser.add_argument("--json", default="bench_dough.json", help="where to write the figures")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, preset, mode, repeats, horizon = args.child
        print(json.dumps(measure(task, preset, mode, int(repeats), int(horizon))))
        return
    if args.quick:
        args.presets, args.repeats = ["default"], 1

    import warp as wp

    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, Python {platform.python_version()}, "
          f"warp {wp.__version__}, CPU backend, repeats {args.repeats} (median)")
    header = f"{'task':<11}{'preset':<9}{'fwd steps/s':>12}{'grad 50 [s]':>12}{'grad/fwd':>10}{'RSS ckpt':>10}{'RSS no ckpt':>13}"
    print(header)
    rows = []
    for preset in args.presets:
        for task in args.tasks:
            fwd = child(task, preset, "forward", args.repeats, HORIZON)
            grad = child(task, preset, "grad", args.repeats, HORIZON)
            nc_horizon = NO_CHECKPOINT_HORIZON[preset]
            nockpt = child(task, preset, "grad_nockpt", 1, nc_horizon)
            row = {
                "task": task, "preset": preset,
                "forward_steps_per_s": HORIZON / fwd["seconds"],
                "grad_50_s": grad["seconds"],
                "grad_over_forward": grad["seconds"] / fwd["seconds"],
                "peak_rss_checkpoint_gib": grad["peak_rss"] / 2**30,
                "peak_rss_no_checkpoint_gib": nockpt["peak_rss"] / 2**30,
                "no_checkpoint_horizon": nc_horizon,
            }
            rows.append(row)
            print(f"{task:<11}{preset:<9}{row['forward_steps_per_s']:>12.1f}{row['grad_50_s']:>12.2f}"
                  f"{row['grad_over_forward']:>10.2f}{row['peak_rss_checkpoint_gib']:>9.2f}G"
                  f"{row['peak_rss_no_checkpoint_gib']:>9.2f}G/{nc_horizon}", flush=True)
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump({"horizon": HORIZON, "repeats": args.repeats, "rows": rows}, handle, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
