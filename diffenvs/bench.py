"""``diffenvs bench``: speed, memory and start-up of every task, as a table and JSON.

Each figure comes from a fresh process (peak resident memory is per process; start-up needs a
new one), medians over the repeats. Figures:

* dough tasks, per preset: forward env steps/s (``differentiable=False``), time of a 50-step
  episode recorded with ``checkpoint=True`` plus ``grad()`` and its ratio to the forward time,
  peak resident memory of that process, and the same without checkpointing (every substep
  recorded: no re-run, memory growing with the horizon by the substep states); a star marks
  the preset's default;
* batched dough (on CUDA by default): forward world-steps/s of the native vector env at many
  worlds per preset, its reset time and device memory per world;
* Pusher: world-steps/s of the native vector env at N = 1, 16, 256 worlds and of Gymnasium's
  ``SyncVectorEnv`` over the largest N (at most 256), measured in the same run;
* start-up: time from process start to the first env step with the kernel cache warm, and to the
  first gradient with an empty cache (every kernel compiled).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

HORIZON = 50
DOUGH_TASKS = ("RollingPin", "Move", "Shape", "Pinch", "Writer", "TripleMove", "Torus", "Rope", "Table", "Chopsticks", "Assembly")
QUICK_TASKS = ("RollingPin", "Move", "Chopsticks")
"""The dough tasks of ``--quick``: a rolling tool, translating tools and a rotating pair (one of each action mapping)."""
SYNC_WORLDS = 256
"""Gymnasium's SyncVectorEnv is measured over at most this many single envs (it builds one per world)."""
BATCHED_STEPS = 20
CHILD_TIMEOUT_S = 120.0
"""A figure whose child process runs longer is reported as not finished (e.g. thousands of paper worlds)."""


def _quiet_import():
    import warp as wp

    wp.config.log_level = 30
    import gymnasium as gym

    import diffenvs  # noqa: F401

    return wp, gym


def measure_dough(task: str, preset: str, mode: str, repeats: int, horizon: int, device: str = "cpu") -> dict[str, float]:
    """In a child process: seconds per episode of ``mode`` (forward | grad | grad_nockpt), peak RSS
    (and on a GPU the peak of Warp's memory pool)."""
    import numpy as np

    wp, gym = _quiet_import()
    kwargs: dict[str, Any] = {"preset": preset, "device": device}
    if mode == "forward":
        kwargs["differentiable"] = False
    else:
        kwargs["checkpoint"] = mode == "grad"
    env = gym.make(f"DiffEnvs/{task}-v0", **kwargs).unwrapped
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, size=(horizon, *env.action_space.shape))
    times = []
    for repeat in range(repeats + 1):  # the first run warms up
        env.reset(seed=0)
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        if mode != "forward":
            env.grad()
        wp.synchronize()
        if repeat:
            times.append(time.perf_counter() - start)
    result = {"seconds": float(np.median(times)), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if wp.get_device(device).is_cuda and hasattr(wp, "get_mempool_used_mem_high"):
        result["peak_device_bytes"] = int(wp.get_mempool_used_mem_high(device))
    return result


def measure_dough_batch(task: str, preset: str, worlds: int, steps: int, repeats: int, device: str = "cpu") -> dict[str, float]:
    """In a child process: a native vector env of ``worlds`` dough worlds, forward only: seconds to
    build it, to reset it (first and second time), world-steps/s and the peak of Warp's memory pool."""
    import numpy as np

    wp, gym = _quiet_import()
    start = time.perf_counter()
    env = gym.make_vec(f"DiffEnvs/{task}-v0", num_envs=worlds, vectorization_mode="vector_entry_point", differentiable=False,
                       preset=preset, device=device, max_episode_steps=None)
    build = time.perf_counter() - start
    resets = []
    for seed in (0, 1):
        start = time.perf_counter()
        env.reset(seed=seed)
        wp.synchronize()
        resets.append(time.perf_counter() - start)
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, size=(steps, *env.action_space.shape))
    times = []
    for repeat in range(repeats + 2):  # two warm-ups: kernels load in the first, CUDA graphs are captured in the second
        wp.synchronize()  # the episode goes on (no autoreset): resets are timed above
        start = time.perf_counter()
        for action in actions:
            env.step(action)
        wp.synchronize()
        if repeat >= 2:
            times.append(time.perf_counter() - start)
    result = {"build_s": build, "first_reset_s": resets[0], "reset_s": resets[1],
              "world_steps_per_s": steps * worlds / float(np.median(times)),
              "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if wp.get_device(device).is_cuda:
        result["peak_device_bytes"] = int(wp.get_mempool_used_mem_high(device))
    return result


def startup_child(env_id: str, with_grad: bool, device: str = "cpu") -> dict[str, float]:
    """In a child process: reach the first env step (and gradient) of ``env_id``."""
    import numpy as np

    _, gym = _quiet_import()
    env = gym.make(env_id, device=device).unwrapped
    env.reset(seed=0)
    env.step(np.zeros(env.action_space.shape))
    if with_grad:
        env.grad()
    return {}


def measure_pusher(worlds: list[int], steps: int, repeats: int, device: str = "cpu") -> dict[str, Any]:
    """World-steps/s of the native Pusher vector env at each N, and of SyncVectorEnv at the largest."""
    import numpy as np

    _, gym = _quiet_import()

    def rate(env, n: int) -> float:
        actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, *env.action_space.shape)).astype(np.float32)
        times = []
        for repeat in range(repeats + 1):
            env.reset(seed=0)
            start = time.perf_counter()
            for action in actions:
                env.step(action)
            if repeat:
                times.append(time.perf_counter() - start)
        return steps * n / float(np.median(times))

    rows = []
    for n in worlds:
        kwargs = {"num_envs": n, "vectorization_mode": "vector_entry_point", "max_episode_steps": None, "device": device}
        rows.append({
            "worlds": n,
            "native": rate(gym.make_vec("DiffEnvs/Pusher-v0", differentiable=False, **kwargs), n),
            "native_recording": rate(gym.make_vec("DiffEnvs/Pusher-v0", differentiable=True, **kwargs), n),
        })
    n = min(max(worlds), SYNC_WORLDS)
    sync = gym.vector.SyncVectorEnv(
        [lambda: gym.make("DiffEnvs/Pusher-v0", differentiable=False, max_episode_steps=None, device=device) for _ in range(n)]
    )
    return {"rows": rows, "sync_worlds": n, "sync": rate(sync, n)}


def _child(kind: str, *args: str, env: dict[str, str] | None = None, timeout: float | None = None) -> tuple[dict[str, Any], float]:
    """Run ``python -m diffenvs.bench --child KIND ARGS`` and return its JSON and its wall time.

    Raises:
        TimeoutError: when ``timeout`` [s] passes first (the child is killed).
    """
    command = [sys.executable, "-m", "diffenvs.bench", "--child", kind, *args]
    start = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})},
                             timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise TimeoutError(f"benchmark child {kind} {args} did not finish in {timeout:.0f} s") from error
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {kind} {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def machine(device: str = "cpu") -> dict[str, Any]:
    """A description of this machine and software."""
    import numpy as np
    import warp as wp

    wp.config.log_level = 30
    warp_device = wp.get_device(device)
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "warp": wp.__version__, "numpy": np.__version__,
        "device": f"{warp_device.alias}: {warp_device.name}" if warp_device.is_cuda else "cpu (Warp: one thread per launch)",
    }


def run(*, quick: bool = False, repeats: int = 3, json_path: str | None = "diffenvs_bench.json", device: str = "cpu",
        worlds: list[int] | None = None, tasks: list[str] | None = None, batched: dict[str, list[int]] | None = None,
        startup: bool = True, batched_task: str = "Move") -> dict[str, Any]:
    """Measure everything on ``device``, print the tables, write JSON; return the figures.

    ``worlds``: the Pusher's world counts (default 1, 16, 256; 1, 16 with ``quick``). ``tasks``: the
    dough tasks of the per-episode table (default all; :data:`QUICK_TASKS` with ``quick``). ``batched``: per preset, the world counts of
    the batched dough table (forward world-steps/s, reset time, device memory per world; default on
    CUDA paper 1, 64, 256 and default 1, 256, 4096, none on the CPU) of ``batched_task`` (default
    Move, whose reset draws a rigidly moved target: RollingPin's and Shape's resets run a scripted
    demonstration per world, one world at a time). ``startup``: measure start-up.
    """
    tasks = list(tasks or (QUICK_TASKS if quick else DOUGH_TASKS))
    if batched is None:
        batched = {"paper": [1, 64, 256], "default": [1, 256, 4096]} if device.startswith("cuda") and not quick else {}
    presets = ["default"] if quick else ["default", "paper"]
    repeats = 1 if quick else repeats
    report: dict[str, Any] = {"machine": machine(device), "repeats": repeats, "horizon": HORIZON}
    print(f"machine: {report['machine']['processor']}, {report['machine']['cpus']} CPUs, Python "
          f"{report['machine']['python']}, warp {report['machine']['warp']}, device {report['machine']['device']}; "
          f"medians of {repeats}")

    if startup:
        print("\nstart-up (new process to first step; cold: empty kernel cache, to first gradient)")
        _child("startup", "DiffEnvs/RollingPin-v0", "0", device)  # make sure the cache is warm
        _, warm = _child("startup", "DiffEnvs/RollingPin-v0", "0", device)
        with tempfile.TemporaryDirectory() as cache:
            _, cold = _child("startup", "DiffEnvs/RollingPin-v0", "1", device, env={"WARP_CACHE_PATH": cache})
        report["startup"] = {"warm_first_step_s": warm, "cold_first_gradient_s": cold}
        print(f"  warm: {warm:.1f} s   cold: {cold:.1f} s")

    print(f"\ndough, {HORIZON}-step episodes")
    print(f"  {'':<20}{'forward':>12}{'checkpointed':>34}{'not checkpointed':>34}   (*: the preset's default)")
    print(f"  {'task':<11}{'preset':<9}{'steps/s':>12}{'grad 50 [s]':>12}{'grad/fwd':>10}{'RSS':>12}"
          f"{'grad 50 [s]':>12}{'grad/fwd':>10}{'RSS':>12}")
    from diffenvs.tasks.dough import PRESETS

    rows = []
    for preset in presets:
        for task in tasks:
            fwd, _ = _child("dough", task, preset, "forward", str(repeats), str(HORIZON), device)
            grad, _ = _child("dough", task, preset, "grad", str(repeats), str(HORIZON), device)
            nockpt, _ = _child("dough", task, preset, "grad_nockpt", str(repeats), str(HORIZON), device)
            row = {
                "task": task, "preset": preset, "forward_steps_per_s": HORIZON / fwd["seconds"],
                "grad_50_s": grad["seconds"], "grad_over_forward": grad["seconds"] / fwd["seconds"],
                "peak_rss_checkpoint_gib": grad["peak_rss"] / 2**30,
                "grad_50_no_checkpoint_s": nockpt["seconds"],
                "grad_over_forward_no_checkpoint": nockpt["seconds"] / fwd["seconds"],
                "peak_rss_no_checkpoint_gib": nockpt["peak_rss"] / 2**30,
            }
            for name, figures in (("checkpoint", grad), ("no_checkpoint", nockpt)):
                if "peak_device_bytes" in figures:
                    row[f"peak_device_{name}_gib"] = figures["peak_device_bytes"] / 2**30
            row["default_checkpoint"] = bool(PRESETS[preset]["checkpoint"])
            rows.append(row)
            mark = ("*", " ") if row["default_checkpoint"] else (" ", "*")
            print(f"  {task:<11}{preset:<9}{row['forward_steps_per_s']:>12.1f}{row['grad_50_s']:>12.2f}"
                  f"{row['grad_over_forward']:>10.2f}{row['peak_rss_checkpoint_gib']:>11.2f}G{mark[0]}"
                  f"{row['grad_50_no_checkpoint_s']:>11.2f}{row['grad_over_forward_no_checkpoint']:>10.2f}"
                  f"{row['peak_rss_no_checkpoint_gib']:>11.2f}G{mark[1]}", flush=True)
            if "peak_device_checkpoint_gib" in row:
                print(f"  {'':<20}device memory, peak of Warp's pool: {row['peak_device_checkpoint_gib']:.2f}G checkpointed, "
                      f"{row.get('peak_device_no_checkpoint_gib', float('nan')):.2f}G not", flush=True)
    report["dough"] = rows

    batch_rows = []
    if batched:
        print(f"\nbatched dough ({batched_task}, native vector env, forward, {BATCHED_STEPS}-step runs)")
        print(f"  {'preset':<9}{'worlds':>7}{'world-steps/s':>15}{'reset [s]':>11}{'first reset':>13}{'GiB/world':>11}")
    for preset, counts in batched.items():
        for n in counts:
            try:
                figures, _ = _child("dough_batch", batched_task, preset, str(n), str(BATCHED_STEPS), str(repeats), device,
                                    timeout=CHILD_TIMEOUT_S)
            except TimeoutError as error:
                batch_rows.append({"task": batched_task, "preset": preset, "worlds": n, "error": str(error)})
                print(f"  {preset:<9}{n:>7}   did not finish in {CHILD_TIMEOUT_S:.0f} s", flush=True)
                continue
            memory = figures.get("peak_device_bytes", figures["peak_rss"]) / 2**30
            row = {"task": batched_task, "preset": preset, "worlds": n, **figures, "gib_per_world": memory / n}
            batch_rows.append(row)
            print(f"  {preset:<9}{n:>7}{row['world_steps_per_s']:>15.0f}{row['reset_s']:>11.2f}{row['first_reset_s']:>13.2f}"
                  f"{row['gib_per_world']:>11.3f}", flush=True)
    report["dough_batched"] = batch_rows
    report["dough_batched_task"] = batched_task

    worlds = worlds or ([1, 16] if quick else [1, 16, 256])
    pusher, _ = _child("pusher", ",".join(map(str, worlds)), "100", str(repeats), device)
    report["pusher"] = pusher
    print("\nPusher world-steps/s, 100-step episodes")
    print(f"  {'worlds':>7}{'native':>12}{'recording':>12}")
    for row in pusher["rows"]:
        print(f"  {row['worlds']:>7}{row['native']:>12.0f}{row['native_recording']:>12.0f}")
    ratio = pusher["rows"][-1]["native"] / pusher["sync"]
    print(f"  SyncVectorEnv over {pusher['sync_worlds']} envs: {pusher['sync']:.0f}; native / sync = {ratio:.1f}x")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"\nwrote {json_path}")
    return report


def _main_child(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "dough":
        task, preset, mode, repeats, horizon, device = args
        result = measure_dough(task, preset, mode, int(repeats), int(horizon), device)
    elif kind == "dough_batch":
        task, preset, worlds, steps, repeats, device = args
        result = measure_dough_batch(task, preset, int(worlds), int(steps), int(repeats), device)
    elif kind == "startup":
        result = startup_child(args[0], args[1] == "1", args[2])
    elif kind == "pusher":
        worlds, steps, repeats, device = args
        result = measure_pusher([int(w) for w in worlds.split(",")], int(steps), int(repeats), device)
    else:
        raise SystemExit(f"unknown benchmark child {kind!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _main_child(sys.argv[2:])
    else:
        run()
