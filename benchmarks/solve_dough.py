"""Adam on grad() against random action sequences on the dough tasks: loss and IoU curves.

For each task: Adam optimizes a 50-step open-loop action sequence through ``grad()`` with soft
tools and the contact loss switched on (the remedies); the softness is annealed linearly from
``--softness`` to ``--final-softness`` over the first ``--anneal`` fraction of the iterations
(annealing all the way to hard contact made every task worse again: hard-contact gradients
are poor guides). Every iterate is replayed with
hard tools and no contact loss, the setting that is reported. The baseline is the best of N uniform
random action sequences, replayed the same way. Writes a CSV per task and a plot::

    python benchmarks/solve_dough.py                       # 3 tasks, 40 iterations, 20 random
    python benchmarks/solve_dough.py --tasks Move --iters 10 --random 5 --out runs/solve
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np


def replay(env, state, actions) -> tuple[float, float]:
    """Final task loss and incremental IoU of ``actions`` from ``state`` (hard tools, no shaping)."""
    env.set_state(state)
    info = {}
    for action in actions:
        info = env.step(action)[4]
    return info["loss"], info["iou_incremental"]


def solve(task: str, args: argparse.Namespace, out: Path) -> dict:
    import gymnasium as gym

    from diffenvs.baselines.trajopt import AdamConfig, optimize_actions

    env_id = f"DiffEnvs/{task}-v0"
    opt_env = gym.make(env_id, tool_softness=args.softness, contact_weight=args.contact_weight).unwrapped
    eval_env = gym.make(env_id, differentiable=False).unwrapped
    opt_env.reset(seed=args.seed)
    eval_env.reset(seed=args.seed)
    state = eval_env.get_state()
    initial_loss = eval_env.loss
    rows = []
    start = time.perf_counter()

    def record(rec: dict, actions: np.ndarray) -> None:
        loss, iou = replay(eval_env, state, actions)
        rows.append({**rec, "eval_loss": loss, "eval_iou_incremental": iou})
        print(f"  {task} it {rec['iteration']:3d}  opt loss {rec['loss']:.3f}  hard loss {loss:.3f}  "
              f"IoU inc {iou:.3f}  {time.perf_counter() - start:.0f}s", flush=True)
        # Softness of the next iteration (the tape of this one is already differentiated).
        fraction = min((rec["iteration"] + 1) / max(args.anneal * args.iters, 1e-9), 1.0)
        softness = args.softness + fraction * (args.final_softness - args.softness)
        opt_env.task.solver.set_tool_softness([softness] * opt_env.task.tool_count)

    config = AdamConfig(iters=args.iters, horizon=args.horizon, lr=args.lr)
    optimize_actions(opt_env, config, state=state, callback=record)
    adam_env_steps = rows[-1]["env_steps"] + args.iters * args.horizon  # the hard replays count too

    rng = np.random.default_rng(args.seed)
    random_results = [replay(eval_env, state, rng.uniform(-1, 1, size=(args.horizon, *eval_env.action_space.shape)))
                      for _ in range(args.random)]
    best_random = min(random_results)
    best = min(rows, key=lambda r: r["eval_loss"])
    with open(out / f"{task}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {
        "task": task, "initial_loss": initial_loss,
        "adam_best_loss": best["eval_loss"], "adam_best_iou_incremental": best["eval_iou_incremental"],
        "adam_env_steps": adam_env_steps,
        "random_best_loss": best_random[0], "random_best_iou_incremental": max(r[1] for r in random_results),
        "random_env_steps": args.random * args.horizon,
        "curve": [(r["iteration"], r["eval_loss"], r["eval_iou_incremental"]) for r in rows],
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 6), squeeze=False)
    for column, res in enumerate(results):
        it, loss, iou = np.array(res["curve"]).T
        axes[0, column].plot(it, loss, label="Adam iterate (hard replay)")
        axes[0, column].axhline(res["random_best_loss"], color="gray", ls="--", label="best of random")
        axes[0, column].set_title(res["task"])
        axes[0, column].set_ylabel("task loss")
        axes[1, column].plot(it, iou)
        axes[1, column].axhline(res["random_best_iou_incremental"], color="gray", ls="--")
        axes[1, column].set_ylabel("incremental IoU")
        axes[1, column].set_xlabel("iteration")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["RollingPin", "Move", "Shape"])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--softness", type=float, default=0.02, help="tool softness while optimizing")
    parser.add_argument("--contact-weight", type=float, default=10.0, help="contact loss while optimizing")
    parser.add_argument("--final-softness", type=float, default=0.005, help="tool softness at the end of annealing")
    parser.add_argument("--anneal", type=float, default=0.75, help="fraction of iterations to reach the final softness")
    parser.add_argument("--random", type=int, default=20, help="random action sequences of the baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/solve_dough")
    args = parser.parse_args()

    import warp as wp

    wp.config.log_level = 30
    import diffenvs  # noqa: F401

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [solve(task, args, out) for task in args.tasks]
    print(f"\n{'task':<11}{'initial':>9}{'Adam loss':>11}{'Adam IoU+':>11}{'random loss':>13}{'random IoU+':>13}"
          f"{'Adam steps':>12}{'random steps':>14}")
    for r in results:
        print(f"{r['task']:<11}{r['initial_loss']:>9.3f}{r['adam_best_loss']:>11.3f}{r['adam_best_iou_incremental']:>11.3f}"
              f"{r['random_best_loss']:>13.3f}{r['random_best_iou_incremental']:>13.3f}{r['adam_env_steps']:>12}"
              f"{r['random_env_steps']:>14}")
    (out / "summary.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    try:
        plot(results, out / "curves.png")
        print(f"wrote {out / 'curves.png'}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install diffenvs[rl])")


if __name__ == "__main__":
    main()
