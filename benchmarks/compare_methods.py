"""Adam with its shipped defaults against the best of 100 random action sequences (and CEM), per task.

Every method runs through :func:`diffenvs.baselines.trajopt.optimize` with the configuration
of ``configs/optimize.yaml`` (its per-env section), from the same initial states (seeds), and is
judged in the reported setting (hard tools, no contact loss). Budgets are world-steps
simulated: forward, backward (one per differentiated step) and hard-tool replays. CEM gets
about the random search's budget. Prints a Markdown table (medians over the seeds) and writes
``summary.json``::

    python benchmarks/compare_methods.py                     # 4 tasks, seeds 0 1 2
    python benchmarks/compare_methods.py --envs DiffEnvs/Pusher-v0 --seeds 0 --out runs/compare
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

ENVS = ["DiffEnvs/Pusher-v0", "DiffEnvs/RollingPin-v0", "DiffEnvs/Move-v0", "DiffEnvs/Shape-v0"]


def run_one(env_id: str, seed: int, method: str, samples: int) -> dict:
    from diffenvs.baselines.problem import Problem
    from diffenvs.baselines.runner import resolve_config
    from diffenvs.baselines.trajopt import optimize
    from diffenvs.configs import CONFIG_DIR

    overrides = {"problem.env_id": env_id, "problem.seed": seed, "solver.seed": seed, "solver.method": method,
                 "solver.random.samples": samples}
    config = resolve_config(CONFIG_DIR / "optimize.yaml", overrides)
    if method == "cem":  # about the random search's budget
        overrides["solver.iters"] = max(1, math.ceil(samples / config.solver.cem.population))
        config = resolve_config(CONFIG_DIR / "optimize.yaml", overrides)
    problem = Problem(config.problem)
    result = optimize(problem, config.solver)
    problem.close()
    return {"env_id": env_id, "seed": seed, "method": method, "initial_loss": result.initial_loss, "loss": result.loss,
            "metric": result.metric, "metric_name": result.metric_name, "budget": result.budget,
            "curve": [(r["env_steps"], r["best_loss"], r["best_metric"]) for r in result.history]}


def steps_to_beat(curve: list, target: float) -> float:
    """Env steps after which a method's best metric first exceeded ``target`` (inf if never)."""
    return next((steps for steps, _, metric in curve if metric > target), math.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=ENVS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=100, help="random sequences of the baseline")
    parser.add_argument("--methods", nargs="+", default=["adam", "random", "cem"])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--replot", action="store_true", help="only redo the table and plot from OUT/summary.json")
    args = parser.parse_args()

    import warp as wp

    wp.config.log_level = 30
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        runs = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        args.envs = list(dict.fromkeys(r["env_id"] for r in runs))
        args.seeds = sorted({r["seed"] for r in runs})
        args.methods = list(dict.fromkeys(r["method"] for r in runs))
        report(runs, args, out)
        return
    runs = []
    for env_id in args.envs:
        for seed in args.seeds:
            for method in args.methods:
                run = run_one(env_id, seed, method, args.samples)
                runs.append(run)
                b = run["budget"]
                print(f"{env_id} seed {seed} {method:>6}: loss {run['initial_loss']:.4g} -> {run['loss']:.4g}, "
                      f"{run['metric_name']} {run['metric']:.3f}, {b['env_steps']} steps, {b['wall_time']:.1f} s", flush=True)
                (out / "summary.json").write_text(json.dumps(runs, indent=1), encoding="utf-8")
    report(runs, args, out)


def report(runs: list[dict], args: argparse.Namespace, out: Path) -> None:
    """Print the Markdown table of medians and plot best metric against env steps."""
    from diffenvs.registration import task_name

    def med(values):
        return statistics.median(values)

    print(f"\nMedians over seeds {args.seeds} (metric: loss_reduction for the Pusher, iou_incremental for dough; "
          "steps: world-steps forward + backward + replays):\n")
    header = "| task | metric | initial loss | " + " | ".join(
        f"{m} loss | {m} metric | {m} steps | {m} time [s]" for m in args.methods) + " | Adam steps to beat random's best metric |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for env_id in args.envs:
        rows = {m: [r for r in runs if r["env_id"] == env_id and r["method"] == m] for m in args.methods}
        first = next(iter(rows.values()))
        cells = [task_name(env_id), first[0]["metric_name"], f"{med([r['initial_loss'] for r in first]):.3g}"]
        for m in args.methods:
            cells += [f"{med([r['loss'] for r in rows[m]]):.3g}", f"{med([r['metric'] for r in rows[m]]):.3f}",
                      f"{med([r['budget']['env_steps'] for r in rows[m]]):.0f}", f"{med([r['budget']['wall_time'] for r in rows[m]]):.0f}"]
        if "adam" in rows and "random" in rows:
            beat = [steps_to_beat(a["curve"], r["metric"]) for a, r in zip(rows["adam"], rows["random"])]
            cells.append(f"{med(beat):.0f}")
        print("| " + " | ".join(cells) + " |")
    print(f"\nwrote {out / 'summary.json'}")
    try:
        plot(runs, args, out / "curves.png")
        print(f"wrote {out / 'curves.png'}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install diffenvs[rl])")


def plot(runs: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.envs), figsize=(3.6 * len(args.envs), 3.2), squeeze=False)
    colors = {"adam": "tab:blue", "random": "tab:gray", "cem": "tab:orange", "gd": "tab:green", "hybrid": "tab:red", "mpc": "tab:purple"}
    for ax, env_id in zip(axes[0], args.envs):
        for run in (r for r in runs if r["env_id"] == env_id):
            steps, _, metric = zip(*run["curve"])
            ax.plot(steps, metric, color=colors.get(run["method"], "black"), alpha=1.0 if run["seed"] == args.seeds[0] else 0.35,
                    label=run["method"] if run["seed"] == args.seeds[0] else None)
        ax.set_title(env_id.split("/")[1])
        ax.set_xlabel("env steps simulated")
        ax.set_ylabel(next(r["metric_name"] for r in runs if r["env_id"] == env_id))
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
