"""Long horizons: does the analytic gradient lose its edge as the episode grows?

Runs a study (``configs/study/horizon.yaml``: the Pusher, Adam, CEM, PPO, APG and SHAC) once per episode
length (``--lengths``; the env option ``max_episode_steps``, which sets the learners' episodes
and the optimizers' sequence length), every method's budget scaled by length / the env's
default episode length, so that every method gets the same number of episodes at every length.
Each length is an ordinary study directory (``<out-dir>/T<length>``: resumable, its own report);
this script adds, in ``<out-dir>``:

- ``report.md`` and ``horizon.csv``: per method and length, the final task metric's interquartile
  mean over instances with its 95% bootstrap interval, and the median wall time of a run;
- ``gradients.csv`` (and a table in the report): per length, the norm of the return's gradient
  with respect to the whole sequence and to its first action, medians over uniform random
  sequences on the study's instances: the exploding or vanishing gradients of long rollouts;
- ``horizon.png``: the metric against the length, one line per method.

::

    python benchmarks/horizon.py                                  # lengths 25 50 100 200 400
    python benchmarks/horizon.py --lengths 25 50 --out-dir runs/horizon --workers 2
    python benchmarks/horizon.py --report-only                    # redraw from the result files
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path


def study_for(base, length: int, default_length: int, out_dir: Path):
    """The base study at episode length ``length``: budgets scaled, its own directory."""
    env_kwargs = {env_id: {**base.env_kwargs.get(env_id, {}), "max_episode_steps": length} for env_id in base.envs}
    methods = {label: dataclasses.replace(spec, budget=max(1, spec.budget * length // default_length))
               for label, spec in base.methods.items()}
    return dataclasses.replace(base, name=f"{base.name}: {length} steps", env_kwargs=env_kwargs, methods=methods,
                               out_dir=str(out_dir / f"T{length}"))


def gradient_norms(env_id: str, env_kwargs: dict, seeds: list[int], length: int, sequences: int) -> dict[str, float]:
    """Median norms of the return's gradient (whole sequence, first action) over random sequences."""
    import numpy as np

    from diffenvs.baselines.problem import Problem, ProblemConfig

    rng = np.random.default_rng(0)
    whole, first = [], []
    for seed in seeds:
        problem = Problem(ProblemConfig(env_id=env_id, seed=seed, horizon=length, env_kwargs=env_kwargs,
                                        eval_batch=sequences))
        try:
            actions = rng.uniform(-1.0, 1.0, size=(sequences, *problem.action_shape))
            grads = problem.value_and_grad(actions).grads
        finally:
            problem.close()
        whole += list(np.linalg.norm(grads.reshape(sequences, -1), axis=1))
        first += list(np.linalg.norm(grads[:, 0], axis=1))
    return {"grad_norm": float(np.median(whole)), "grad_norm_first": float(np.median(first))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/study/horizon.yaml")
    parser.add_argument("--lengths", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--out-dir", default=None, help="default: the config's out_dir")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--sequences", type=int, default=8, help="random sequences per instance for the gradient norms")
    parser.add_argument("--report-only", action="store_true", help="no runs: the report from the finished ones")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if min(args.lengths) < 1:
        parser.error("--lengths must be >= 1")

    import gymnasium as gym
    import matplotlib
    import warp as wp

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import diffenvs  # noqa: F401  (registers the ids)
    from diffenvs.baselines.execution import run_study
    from diffenvs.baselines.report import load_runs, summarize, write_report
    from diffenvs.baselines.study import load_study
    from diffenvs.registration import task_name

    wp.config.log_level = 30
    overrides = {key: value for key, value in (("out_dir", args.out_dir), ("workers", args.workers)) if value}
    base = load_study(args.config, overrides)
    out = Path(base.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    defaults = {int(gym.spec(env_id).max_episode_steps) for env_id in base.envs}
    if len(defaults) != 1:
        raise SystemExit(f"{args.config}: its envs have different default episode lengths {sorted(defaults)}: "
                         "the budgets cannot scale with one length")
    default_length = defaults.pop()
    rows, grad_rows = [], []
    for length in args.lengths:
        study = study_for(base, length, default_length, out)
        if args.report_only:
            if not Path(study.out_dir, "runs").exists():
                continue
            write_report(study)
        else:
            result = run_study(study, progress=not args.no_progress)
            if result.failed:
                print(f"T{length}: failed runs {result.failed}")
        for env_id, table in summarize(study, load_runs(study)).items():
            for row in table:
                cell = row["cell"]  # below five instances no interval: the range of the runs instead
                rows.append({"env_id": env_id, "length": length, "method": row["method"], "runs": row["runs"],
                             "iqm": row["iqm"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                             "low": cell.low if cell.has_interval else min(cell.values),
                             "high": cell.high if cell.has_interval else max(cell.values), "text": cell.text(2),
                             "env_steps": row["env_steps"], "wall_time": row["wall_time"]})
        grads_path = Path(study.out_dir, "gradients.csv")
        if not grads_path.exists() and not args.report_only:
            with grads_path.open("w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, ["env_id", "length", "grad_norm", "grad_norm_first"])
                writer.writeheader()
                for env_id in base.envs:
                    writer.writerow({"env_id": env_id, "length": length, **gradient_norms(
                        env_id, base.env_kwargs.get(env_id, {}), list(base.seeds), length, args.sequences)})
        if grads_path.exists():
            with grads_path.open(encoding="utf-8") as stream:
                grad_rows += list(csv.DictReader(stream))
    if not rows:
        raise SystemExit(f"no finished runs under {out}")

    with (out / "horizon.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lengths = sorted({row["length"] for row in rows})
    lines = [f"# {base.name}", "",
             (f"`python benchmarks/horizon.py --lengths {' '.join(map(str, lengths))}`; budgets scaled with the "
             "episode length (the same number of episodes at every length); final task metric, interquartile mean "
             f"over instances {list(base.seeds)} [95% bootstrap interval; below five instances the runs themselves]; "
             "median wall time per run."), ""]
    for env_id in base.envs:
        methods = list(dict.fromkeys(row["method"] for row in rows if row["env_id"] == env_id))
        lines += [f"## {task_name(env_id)}", "", "| method | " + " | ".join(f"T={t}" for t in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for method in methods:
            cells = []
            for length in lengths:
                match = [r for r in rows if r["env_id"] == env_id and r["method"] == method and r["length"] == length]
                cells.append(f"{match[0]['text']} ({match[0]['wall_time']:.0f} s)" if match else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        grads = [g for g in grad_rows if g["env_id"] == env_id]
        if grads:
            lines += ["", (f"Gradient of the return, median norm over {args.sequences} uniform random sequences per "
                      "instance:"), "", "| length | whole sequence | first action |", "|---|---|---|"]
            lines += [f"| {g['length']} | {float(g['grad_norm']):.3g} | {float(g['grad_norm_first']):.3g} |" for g in grads]
        lines.append("")
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")

    figure, axes = plt.subplots(1, len(base.envs), figsize=(5 * len(base.envs), 3.6), squeeze=False)
    for ax, env_id in zip(axes[0], base.envs):
        for method in dict.fromkeys(row["method"] for row in rows if row["env_id"] == env_id):
            mine = sorted((r for r in rows if r["env_id"] == env_id and r["method"] == method), key=lambda r: r["length"])
            x = [r["length"] for r in mine]
            y = [r["iqm"] for r in mine]
            err = [[r["iqm"] - r["low"] for r in mine], [r["high"] - r["iqm"] for r in mine]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.set_xlabel("episode length [steps]")
        ax.set_ylabel("task metric (IQM; 95% CI, or the runs' range)")
        ax.set_title(task_name(env_id))
        ax.legend()
    figure.tight_layout()
    figure.savefig(out / "horizon.png", dpi=120)
    print((out / "report.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
