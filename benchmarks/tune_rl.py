"""Tune an RL baseline's hyperparameters with Optuna on the task metric, for ``configs/rl/<algo>.yaml``.

A trial is scored the way the comparison study judges, on tuning instances ``--seeds`` (default 100,
101, 102: not the instances 0, 1, 2 that comparisons report, so the reported numbers are not tuned
on). ``--protocol instance`` (the default, the study's single-instance protocol): the trial trains
on each tuning instance in turn (every episode resets to it) and scores the mean over instances of
its best evaluation there. ``--protocol random``: one training on fresh random instances, scored by
its last evaluation's mean metric on the tuning instances. ``--train-seeds`` repeats each training
with several seeds (their mean), against the spread between seeds that a single seed leaves.
TPE sampler, median pruner on the intermediate scores; the study lives in an SQLite file, so an
interrupted tuning resumes where it stopped (a trial the kill interrupted is trained again first).
Several processes can tune one study in parallel (the second and later ones with their own ``--seed``
and ``--no-retry-interrupted``): a process starts a trial only while the study holds fewer than
``--trials`` trials complete, pruned or running (another process's in-flight ones count), so the budget
holds.
``--stop-at 1`` stops the tuning once a trial scores the task metric's maximum, where no later trial
could score higher (a resumed tuning that has reached it stops at once). ``--set`` passes env
options, as ``diffenvs train`` does: the dough studies' hard tools need ``--set tool_softness=0``.
Writes ``tuning.yaml`` (the settings; resuming with others refuses), ``trials.csv`` (every trial:
its values and score) and ``best.yaml`` (the best trial as a section to paste into
``configs/rl/<algo>.yaml``), both rewritten after every trial::

    python benchmarks/tune_rl.py --env DiffEnvs/Pusher-v0 --algo ppo --trials 16 --steps 30000
    python benchmarks/tune_rl.py --env DiffEnvs/Pusher-v0 --algo shac --trials 16 --steps 100000
    python benchmarks/tune_rl.py --env DiffEnvs/RollingPin-v0 --algo sac --trials 10 --steps 30000 --set tool_softness=0

Search spaces: rl-zoo3's for PPO, SAC and TD3 (SAC and TD3 also with a replay ratio below one: fewer
gradient steps than env steps); for APG and SHAC the step sizes, window, discount,
network size, the contact loss's start weight (and SHAC's critic step size, lambda, target rate,
initial exploration and number of worlds).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path
from typing import Any


def suggest(trial: Any, algo: str, n_envs: int = 1) -> dict[str, Any]:
    """One trial's hyperparameters (rl-zoo3 keys); the search spaces follow rl-zoo3's own. ``n_envs``:
    worlds of the training vector env (the section's, not searched); an off-policy algorithm's replay
    ratio counts gradient steps per transition, and each of ``train_freq`` vector steps brings ``n_envs``."""
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
            train_freq=trial.suggest_categorical("train_freq", [1, 4, 8, 16]),
        )
        # rl-zoo3 ties gradient_steps to train_freq (one update per env step); a replay ratio below
        # one is also searched: on a CPU the updates cost most of an off-policy algorithm's time
        ratio = trial.suggest_categorical("replay_ratio", [0.25, 0.5, 1.0])
        values["gradient_steps"] = max(1, round(values["train_freq"] * n_envs * ratio))
        if algo == "td3":
            values["noise_std"] = trial.suggest_categorical("noise_std", [0.05, 0.1, 0.2, 0.3])
    return values


def suggest_through_sim(trial: Any, algo: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """One trial's hyperparameters of APG or SHAC (fields of ``DiffRLConfig``); with the env's
    ``base`` section, also the start weight of its contact loss (a factor on the base's)."""
    width = trial.suggest_categorical("width", [64, 128])
    values: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "window": trial.suggest_categorical("window", [8, 16, 32, 64]),
        "gamma": trial.suggest_categorical("gamma", [0.95, 0.98, 0.99, 0.995]),
        "net_arch": [width, width],
    }
    if algo == "shac":
        values.update(
            critic_lr=trial.suggest_float("critic_lr", 1e-4, 1e-2, log=True),
            lam=trial.suggest_categorical("lam", [0.9, 0.95, 0.98]),
            target_alpha=trial.suggest_categorical("target_alpha", [0.2, 0.4, 0.6]),
            init_log_std=trial.suggest_categorical("init_log_std", [-1.5, -1.0, -0.5]),
            n_envs=trial.suggest_categorical("n_envs", [4, 8, 16, 32]),
        )
    else:
        values["action_noise"] = trial.suggest_categorical("action_noise", [0.0, 0.05, 0.1])
    remedies = dict((base or {}).get("remedies") or {})
    if "contact_weight" in remedies:
        factor = trial.suggest_categorical("contact_factor", [0.3, 1.0, 3.0])
        values["remedies"] = {**remedies, "contact_weight": float(f"{remedies['contact_weight'] * factor:.6g}")}
    return values


def suggest_any(trial: Any, algo: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The learner's search space: a typed config (APG, SHAC: :class:`DiffRLConfig`'s fields) or
    stable-baselines3's keyword arguments (the registered method says which)."""
    from diffenvs.baselines.method import get_method

    if get_method(algo).config_class is not None:
        return suggest_through_sim(trial, algo, base)
    return suggest(trial, algo, int((base or {}).get("n_envs", 1)))


def reached(study: Any, stop_at: float | None) -> bool:
    """Whether a completed trial of ``study`` scored at least ``stop_at`` (never when it is None)."""
    import optuna

    return stop_at is not None and any(
        t.state == optuna.trial.TrialState.COMPLETE and t.value >= stop_at for t in study.get_trials(deepcopy=False))


def stop_when_reached(stop_at: float | None) -> Any:
    """An ``optimize`` callback that stops the study once a trial scores at least ``stop_at``: a saturated
    objective (the task metric's maximum is 1), where no later trial can score higher."""

    def callback(study: Any, trial: Any) -> None:
        if reached(study, stop_at):
            print(f"trial {trial.number}: a trial scored at least --stop-at {stop_at}: the tuning stops", flush=True)
            study.stop()

    return callback


def budget_left(study: Any, trials: int) -> int:
    """How many trials a process may still start in ``study``: ``trials`` less those complete, pruned or
    running there. A trial another process has in flight counts, so that processes tuning one study in
    parallel keep to the shared budget; a failed trial (a killed one's, retried) does not."""
    import optuna

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    return trials - sum(t.state in counted for t in study.get_trials(deepcopy=False))


def run_trials(study: Any, objective: Any, trials: int, *, stop_at: float | None = None, callbacks: tuple = ()) -> int:
    """Run trials of ``objective`` one at a time while the budget of ``trials`` (:func:`budget_left`) has
    room and no trial scored ``stop_at``; ``callbacks`` run after each, as ``optimize``'s. Returns how many
    trials this process ran."""
    ran = 0
    while budget_left(study, trials) > 0 and not reached(study, stop_at):
        study.optimize(objective, n_trials=1, callbacks=[*callbacks, stop_when_reached(stop_at)])
        ran += 1
    return ran


def retry_interrupted(study: Any, requeue: bool = True) -> list[int]:
    """Mark the trials a killed tuning left running as failed and (``requeue``) queue their values again,
    so that a resumed tuning retrains them first. Every running trial counts as interrupted: a second
    process tuning the same study in parallel must skip this (``--no-retry-interrupted``). Returns the
    numbers of the interrupted trials."""
    import optuna

    interrupted = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in interrupted:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if requeue:
            study.enqueue_trial(t.params, skip_if_exists=False)
    return [t.number for t in interrupted]


def write_results(study: Any, out: Path, env_id: str, algo: str, base: dict[str, Any]) -> None:
    """Write ``trials.csv`` (every finished trial) and, once a trial completed, ``best.yaml`` into ``out``.

    Called after every trial, so that a tuning spread over several sittings shows its progress.
    """
    import optuna
    import yaml

    trials = [t for t in study.trials if t.state.is_finished()]
    keys = sorted({key for t in trials for key in t.params})
    with open(out / "trials.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "score", *keys])
        for t in trials:
            writer.writerow([t.number, t.state.name, t.value, *(t.params.get(key, "") for key in keys)])
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        best = study.best_trial
        section = {**base, **suggest_any(optuna.trial.FixedTrial(best.params), algo, base)}
        (out / "best.yaml").write_text(yaml.safe_dump({env_id: section}, sort_keys=False), encoding="utf-8")


def main() -> None:
    from diffenvs.baselines.method import method_names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DiffEnvs/Pusher-v0")
    parser.add_argument("--algo", choices=method_names("learner"), default="ppo")
    parser.add_argument("--protocol", choices=["instance", "random"], default="instance",
                        help="train on each tuning instance (the study's protocol), or once on random instances")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0], help="training seeds per trial (their mean)")
    parser.add_argument("--trials", type=int, default=16, help="trials in all (a resumed study counts its earlier ones)")
    parser.add_argument("--steps", type=int, default=30_000, help="env steps per trial")
    parser.add_argument("--evaluations", type=int, default=3, help="evaluations per trial (the pruner's checkpoints)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102], help="tuning instances (reset seeds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (the trainings' seeds are --train-seeds); a second "
                        "process tuning the same study in parallel needs its own, or it repeats the first one's trials, "
                        "and --no-retry-interrupted, or it fails the first one's running trial")
    parser.add_argument("--retry-interrupted", action=argparse.BooleanOptionalAction, default=True,
                        help="at the start, fail the trials left running in the study (a killed tuning's) and train "
                             "their values again first")
    parser.add_argument("--stop-at", type=float, default=None, metavar="SCORE",
                        help="stop once a trial scores at least SCORE (1: the task metric's maximum, a saturated objective); "
                             "a resumed tuning that has reached it runs no trial and retrains no interrupted one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an env option of training and evaluation (repeatable), e.g. --set tool_softness=0 for the "
                             "studies' hard tools")
    parser.add_argument("--out", default=None, help="results folder (default runs/tune/<Task>-<algo>)")
    args = parser.parse_args()

    import optuna
    import warp as wp
    import yaml

    wp.config.log_level = 30
    from diffenvs.baselines.learner import TrainConfig, run_train
    from diffenvs.baselines.rl import load_hyperparams
    from diffenvs.cli import parse_sets
    from diffenvs.registration import task_name

    env_kwargs = parse_sets(args.set)

    task = task_name(args.env)
    out = Path(args.out or f"runs/tune/{task}-{args.algo}")
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "tuning.yaml"  # what the trials were scored on: a resumed tuning must not change it
    recorded = {"env": args.env, "algo": args.algo, "protocol": args.protocol, "steps": args.steps,
                "evaluations": args.evaluations, "seeds": args.seeds, "train_seeds": args.train_seeds, "env_kwargs": env_kwargs}
    if settings.exists():
        before = yaml.safe_load(settings.read_text(encoding="utf-8"))
        if changed := sorted(key for key in recorded if before.get(key) != recorded[key]):
            raise SystemExit(f"{out} holds a tuning with other settings ({', '.join(changed)}): give --out another folder")
    if args.stop_at is not None:  # when to stop, not what a trial is scored on: a resumed tuning may change it
        recorded["stop_at"] = args.stop_at
    settings.write_text(yaml.safe_dump(recorded, sort_keys=False), encoding="utf-8")
    base = load_hyperparams(args.algo, args.env, random_instances=args.protocol == "random")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{task}-{args.algo}", storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.seed), pruner=optuna.pruners.MedianPruner(n_startup_trials=4),
    )

    def train(values: dict[str, Any], seed: int, instance: int | None) -> list[dict[str, Any]]:
        eval_every = max(args.steps // args.evaluations, 1)
        with tempfile.TemporaryDirectory() as runs:
            config = TrainConfig(env_id=args.env, algo=args.algo, steps=args.steps, seed=seed, eval_every=eval_every,
                                 eval_seeds=tuple(args.seeds), instance=instance, hyperparams=values, out_dir=runs, env_kwargs=env_kwargs,
                                 run_name="trial")
            return run_train(config, progress=False).evaluations

    def objective(trial: optuna.Trial) -> float:
        values = suggest_any(trial, args.algo, base)
        scores = []
        if args.protocol == "instance":  # one training per instance and seed: the study's best policy on it
            for index, instance in enumerate(args.seeds):
                scores += [max(e["metric_mean"] for e in train(values, seed, instance)) for seed in args.train_seeds]
                trial.report(sum(scores) / len(scores), index)
                if index < len(args.seeds) - 1 and trial.should_prune():
                    raise optuna.TrialPruned()
        else:
            runs = [train(values, seed, None) for seed in args.train_seeds]
            for step in range(1, len(runs[0]) - 1):
                trial.report(sum(run[step]["metric_mean"] for run in runs) / len(runs), runs[0][step]["env_steps"])
                if trial.should_prune():
                    raise optuna.TrialPruned()
            scores = [run[-1]["metric_mean"] for run in runs]
        score = sum(scores) / len(scores)
        print(f"trial {trial.number}: {score:.3f} {values}", flush=True)
        return score

    if study.trials:  # resumed: a sampler seeded as the first process was would draw its first trials again
        study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials))
    done_already = reached(study, args.stop_at)
    for number in retry_interrupted(study, requeue=not done_already) if args.retry_interrupted else []:
        print(f"trial {number} was interrupted: " + ("a trial reached --stop-at, it is not retrained" if done_already
              else "its values are trained again first"), flush=True)
    run_trials(study, objective, args.trials, stop_at=args.stop_at,
               callbacks=(lambda study, _trial: write_results(study, out, args.env, args.algo, base),))
    write_results(study, out, args.env, args.algo, base)
    trials = [t for t in study.trials if t.state.is_finished()]
    best = study.best_trial
    print(f"best of {len(trials)} trials: trial {best.number}, {args.seeds} metric {best.value:.3f}; wrote {out / 'best.yaml'}")


if __name__ == "__main__":
    main()
