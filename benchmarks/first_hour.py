"""A newcomer's first experiment on every id, with the env's default options: plain Adam on ``grad()``
against random search given more rollouts.

Adam ascends the return of one open-loop action sequence from zeros (no remedies of its own: the
env's defaults only, hard tools); random search keeps the best of ``--samples`` uniform sequences.
Both are judged by the task loss and the task's metric after the last step, from the same
initial states (seeds). Rollouts count every simulated sequence: Adam's differentiated ones and
its replays, random search's samples. Prints one row per id (medians over seeds, and per-seed
wins) and writes ``first_hour.json``::

    python benchmarks/first_hour.py                                   # every id, seeds 0 1 2
    python benchmarks/first_hour.py --envs DiffEnvs/Pusher-v0 --seeds 0 --iters 10
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def run(env_id: str, seed: int, args: argparse.Namespace) -> dict:
    from diffenvs.baselines.problem import Problem, ProblemConfig
    from diffenvs.baselines.trajopt import GradientConfig, RandomConfig, SolverConfig, optimize

    problem = Problem(ProblemConfig(env_id=env_id, seed=seed, horizon=args.horizon, env_kwargs=dict(args.set)))
    adam = optimize(problem, SolverConfig(method="adam", iters=args.iters, seed=seed, gradient=GradientConfig(lr=args.lr)))
    rand = optimize(problem, SolverConfig(method="random", seed=seed, random=RandomConfig(samples=args.samples)))
    problem.close()
    return {"env_id": env_id, "seed": seed, "initial_loss": adam.initial_loss, "metric_name": adam.metric_name,
            **{f"{name}_{key}": value for name, result in (("adam", adam), ("random", rand))
               for key, value in (("loss", result.loss), ("metric", result.metric), ("rollouts", result.budget["rollouts"]),
                                  ("seconds", result.budget["wall_time"]))}}


def main() -> None:
    import diffenvs
    from diffenvs.cli import parse_sets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=[info.id for info in diffenvs.ENVS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--horizon", type=int, default=None, help="env steps of the sequence (default: the id's episode)")
    parser.add_argument("--iters", type=int, default=20, help="Adam iterations")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam's step size [action units]")
    parser.add_argument("--samples", type=int, default=100, help="random sequences")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an env option instead of its default (repeatable), e.g. to try new defaults")
    parser.add_argument("--out", default="runs/first_hour")
    args = parser.parse_args()
    try:
        args.set = parse_sets(args.set)
    except ValueError as error:
        parser.error(str(error))

    import warp as wp

    wp.config.log_level = 30
    rows = []
    for env_id in args.envs:
        for seed in args.seeds:
            row = run(env_id, seed, args)
            rows.append(row)
            print(f"{env_id} seed {seed}: loss {row['initial_loss']:.4g} -> Adam {row['adam_loss']:.4g} "
                  f"({row['adam_rollouts']} rollouts), random {row['random_loss']:.4g} ({row['random_rollouts']}); "
                  f"{row['metric_name']} {row['adam_metric']:.3f} vs {row['random_metric']:.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "first_hour.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(f"\nAdam: {args.iters} iterations, lr {args.lr}; random: best of {args.samples}; horizon {args.horizon}; "
          f"seeds {args.seeds}; options {dict(args.set) or 'default'}; medians\n")
    print("| id | metric | initial loss | Adam loss | Adam metric | Adam rollouts | random loss | random metric "
          "| random rollouts | seeds where Adam's loss is lower | Adam beats random with fewer rollouts |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for env_id in args.envs:
        mine = [r for r in rows if r["env_id"] == env_id]

        def med(key: str, mine: list[dict] = mine) -> float:
            return statistics.median(r[key] for r in mine)

        wins = sum(r["adam_loss"] < r["random_loss"] for r in mine)
        beats = med("adam_loss") < med("random_loss") and med("adam_rollouts") < med("random_rollouts")
        print(f"| {env_id} | {mine[0]['metric_name']} | {med('initial_loss'):.3g} | {med('adam_loss'):.3g} | "
              f"{med('adam_metric'):.3f} | {med('adam_rollouts'):.0f} | {med('random_loss'):.3g} | {med('random_metric'):.3f} | "
              f"{med('random_rollouts'):.0f} | {wins}/{len(mine)} | {'yes' if beats else 'no'} |")


if __name__ == "__main__":
    main()
