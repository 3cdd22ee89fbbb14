"""Tune an RL baseline's hyperparameters with Optuna on the task metric, for ``configs/rl/<algo>.yaml``.

Each trial trains ``diffenvs train`` style (the native vector env, fresh random instances) for
``--steps`` env steps and is scored by its deterministic policy's mean task metric on the tuning
instances ``--seeds`` (default 100, 101, 102: not the instances 0, 1, 2 that comparisons report,
so the reported numbers are not tuned on). TPE sampler, median pruner on the intermediate
evaluations; the study lives in an SQLite file, so an interrupted tuning resumes where it stopped.
Writes ``trials.csv`` (every trial: its values and score) and ``best.yaml`` (the best trial as an
rl-zoo3 section to paste into ``configs/rl/<algo>.yaml``)::

    python benchmarks/tune_rl.py --env DiffEnvs/Pusher-v0 --algo ppo --trials 16 --steps 30000
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path
from typing import Any


def suggest(trial: Any, algo: str) -> dict[str, Any]:
    """One trial's hyperparameters (rl-zoo3 keys); the search spaces follow rl-zoo3's own."""
    arch = trial.suggest_categorical("net_arch", ["small", "medium"])
    values: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "gamma": trial.suggest_categorical("gamma", [0.95, 0.98, 0.99, 0.995]),
        "policy_kwargs": f"dict(net_arch=[{64 if arch == 'small' else 256}, {64 if arch == 'small' else 256}])",
    }
    if algo == "ppo":
        values.update(
            n_steps=trial.suggest_categorical("n_steps", [64, 128, 256, 512]),
            batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
            n_epochs=trial.suggest_categorical("n_epochs", [5, 10, 20]),
            gae_lambda=trial.suggest_categorical("gae_lambda", [0.9, 0.95, 0.98]),
            clip_range=trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3]),
            ent_coef=trial.suggest_float("ent_coef", 1e-8, 1e-2, log=True),
        )
    else:
        values.update(
            batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]),
            tau=trial.suggest_categorical("tau", [0.005, 0.01, 0.02]),
            train_freq=trial.suggest_categorical("train_freq", [1, 4, 8]),
        )
        values["gradient_steps"] = values["train_freq"]
        if algo == "td3":
            values["noise_std"] = trial.suggest_categorical("noise_std", [0.05, 0.1, 0.2, 0.3])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DiffEnvs/Pusher-v0")
    parser.add_argument("--algo", choices=["ppo", "sac", "td3"], default="ppo")
    parser.add_argument("--trials", type=int, default=16, help="trials in all (a resumed study counts its earlier ones)")
    parser.add_argument("--steps", type=int, default=30_000, help="env steps per trial")
    parser.add_argument("--evaluations", type=int, default=3, help="evaluations per trial (the pruner's checkpoints)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102], help="tuning instances (reset seeds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial's training")
    parser.add_argument("--out", default=None, help="results folder (default runs/tune/<Task>-<algo>)")
    args = parser.parse_args()

    import optuna
    import warp as wp
    import yaml

    wp.config.log_level = 30
    from diffenvs.baselines.rl import TrainConfig, load_hyperparams, run_train

    task = args.env.split("/")[-1].removesuffix("-v0")
    out = Path(args.out or f"runs/tune/{task}-{args.algo}")
    out.mkdir(parents=True, exist_ok=True)
    base = load_hyperparams(args.algo, args.env)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{task}-{args.algo}", storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.seed), pruner=optuna.pruners.MedianPruner(n_startup_trials=4),
    )

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, args.algo)
        eval_every = max(args.steps // args.evaluations, 1)
        with tempfile.TemporaryDirectory() as runs:
            config = TrainConfig(env_id=args.env, algo=args.algo, steps=args.steps, seed=args.seed, eval_every=eval_every,
                                 eval_seeds=tuple(args.seeds), hyperparams=values, out_dir=runs, run_name="trial")
            run = run_train(config, progress=False)
        for evaluation in run.evaluations[1:-1]:
            trial.report(evaluation["metric_mean"], evaluation["env_steps"])
            if trial.should_prune():
                raise optuna.TrialPruned()
        score = run.evaluations[-1]["metric_mean"]
        print(f"trial {trial.number}: {score:.3f} {values}", flush=True)
        return score

    remaining = args.trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    trials = [t for t in study.trials if t.state.is_finished()]
    keys = sorted({key for t in trials for key in t.params})
    with open(out / "trials.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "score", *keys])
        for t in trials:
            writer.writerow([t.number, t.state.name, t.value, *(t.params.get(key, "") for key in keys)])
    best = study.best_trial
    section = {**base, **suggest(optuna.trial.FixedTrial(best.params), args.algo)}
    (out / "best.yaml").write_text(yaml.safe_dump({args.env: section}, sort_keys=False), encoding="utf-8")
    print(f"best of {len(trials)} trials: trial {best.number}, {args.seeds} metric {best.value:.3f}; wrote {out / 'best.yaml'}")


if __name__ == "__main__":
    main()
