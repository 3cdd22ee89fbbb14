"""benchmarks/tune_rl.py: its search spaces give configs `diffenvs train` accepts; a tiny resumable tuning."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from diffenvs.baselines.rl import SB3_ALGOS, algo_kwargs

ROOT = Path(__file__).resolve().parents[1]


def _tune_module():
    spec = importlib.util.spec_from_file_location("tune_rl", ROOT / "benchmarks" / "tune_rl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n_envs", [1, 8])
@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_search_spaces_give_valid_hyperparameters(algo, n_envs):
    import optuna

    tune = _tune_module()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        kwargs, special = algo_kwargs(tune.suggest_any(trial, algo, {"n_envs": n_envs}), where=algo)
        assert 0 < kwargs["learning_rate"] < 1 and special["policy_kwargs"]["net_arch"] in ([64, 64], [256, 256])
        if algo != "ppo":  # the replay ratio: gradient steps per transition, n_envs transitions per vector step
            transitions = kwargs["train_freq"] * n_envs
            assert 1 <= kwargs["gradient_steps"] <= transitions
            if transitions * trial.params["replay_ratio"] >= 1:  # else one update: the fewest there can be
                ratio = kwargs["gradient_steps"] / transitions
                assert ratio == pytest.approx(trial.params["replay_ratio"], abs=0.5 / transitions)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("algo", ["apg", "shac"])
def test_through_sim_search_spaces_give_valid_configs(algo):
    import optuna

    from diffenvs.baselines.diffrl import diffrl_config
    from diffenvs.baselines.rl import load_hyperparams

    tune = _tune_module()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        base = load_hyperparams(algo, "DiffEnvs/Pusher-v0")
        config = diffrl_config(base, tune.suggest_any(trial, algo, base), where=algo)
        assert 0 < config.learning_rate < 1 and config.window in (8, 16, 32, 64)
        factor = config.remedies["contact_weight"] / base["remedies"]["contact_weight"]
        assert factor == pytest.approx(trial.params["contact_factor"])
        assert config.remedies_final == base["remedies_final"]  # the schedule still ends without the remedy
        study.tell(trial, 0.0)


def test_interrupted_trial_is_failed_and_retried_with_its_values(tmp_path):
    import optuna

    tune = _tune_module()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    done = study.ask()
    tune.suggest_any(done, "td3")
    study.tell(done, 0.5)
    killed = study.ask()  # a process killed mid-trial leaves it RUNNING in the file
    values = tune.suggest_any(killed, "td3")
    resumed = optuna.load_study(study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    assert tune.retry_interrupted(resumed) == [killed.number]
    assert resumed.trials[killed.number].state == optuna.trial.TrialState.FAIL
    assert tune.retry_interrupted(resumed) == []  # nothing left running
    retry = resumed.ask()
    assert tune.suggest_any(retry, "td3") == values and retry.number == killed.number + 1


def test_stop_at_ends_the_tuning_at_a_saturated_score_and_a_resume_runs_nothing(tmp_path):
    import optuna

    tune = _tune_module()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    scores = iter([0.4, 1.0, 0.7, 0.9])
    study.optimize(lambda trial: next(scores), n_trials=4, callbacks=[tune.stop_when_reached(1.0)])
    assert [t.value for t in study.trials] == [0.4, 1.0]  # stopped after the trial that reached it
    assert tune.reached(study, 1.0) and not tune.reached(study, None) and not tune.reached(study, 1.01)
    study.ask()  # a process killed while a further trial ran: failed, not queued again once the score is reached
    resumed = optuna.load_study(study_name="s", storage=storage)
    assert tune.retry_interrupted(resumed, requeue=not tune.reached(resumed, 1.0)) == [2]
    states = [t.state for t in resumed.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.FAIL]  # nothing WAITING
    never = optuna.create_study(direction="maximize")
    never.optimize(lambda trial: 1.0, n_trials=3, callbacks=[tune.stop_when_reached(None)])
    assert len(never.trials) == 3  # without --stop-at every trial runs


def test_parallel_processes_keep_to_the_shared_trial_budget(tmp_path):
    import optuna

    tune = _tune_module()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    first.optimize(lambda trial: 0.1, n_trials=2)
    second = optuna.load_study(study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
    pruned = second.ask()
    second.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    in_flight = second.ask()  # the second process is training this one while the first process starts
    assert tune.budget_left(first, 5) == 1
    assert tune.run_trials(first, lambda trial: 0.2, 5) == 1  # the in-flight trial counts: one more, not two
    second.tell(in_flight, 0.3)
    assert tune.budget_left(first, 5) == 0 and tune.run_trials(first, lambda trial: 0.2, 5) == 0
    failed = first.ask()  # a failed trial (a killed process's, retried) is not counted against the budget
    first.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert tune.run_trials(first, lambda trial: 0.2, 6) == 1
    states = [t.state.name for t in first.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert tune.run_trials(first, lambda trial: 1.0, 9, stop_at=1.0) == 1  # and --stop-at ends it early
    assert tune.run_trials(first, lambda trial: 1.0, 9, stop_at=1.0) == 0


def test_results_written_after_each_trial_list_finished_trials_only(tmp_path):
    import optuna
    import yaml

    tune = _tune_module()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    tune.write_results(study, tmp_path, "DiffEnvs/Pusher-v0", "sac", {"policy": "MlpPolicy"})  # nothing finished yet
    assert (tmp_path / "trials.csv").read_text().strip().splitlines() == ["number,state,score"]
    assert not (tmp_path / "best.yaml").exists()
    scores = {}
    for score in (0.2, 0.7, None):  # two complete trials, one pruned
        trial = study.ask()
        scores[trial.number] = (score, tune.suggest_any(trial, "sac"))
        study.tell(trial, score, state=None if score is not None else optuna.trial.TrialState.PRUNED)
    study.ask()  # running: the tuning is still on it
    tune.write_results(study, tmp_path, "DiffEnvs/Pusher-v0", "sac", {"policy": "MlpPolicy"})
    rows = (tmp_path / "trials.csv").read_text().strip().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["COMPLETE", "COMPLETE", "PRUNED"]
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())["DiffEnvs/Pusher-v0"]
    assert best["policy"] == "MlpPolicy" and best["learning_rate"] == scores[1][1]["learning_rate"]


@pytest.mark.slow
def test_tiny_tuning_writes_trials_and_best_and_resumes(tmp_path):
    import yaml

    command = [sys.executable, str(ROOT / "benchmarks" / "tune_rl.py"), "--env", "DiffEnvs/Pusher-v0", "--algo", "ppo",
               "--steps", "256", "--evaluations", "1", "--seeds", "100", "--out", str(tmp_path)]
    for trials in (2, 3):  # the second call resumes the study: one more trial
        result = subprocess.run([*command, "--trials", str(trials)], check=False, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = (tmp_path / "trials.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + trials
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())["DiffEnvs/Pusher-v0"]
    assert best["policy"] == "MlpPolicy" and "learning_rate" in best and "n_timesteps" in best
    first, _, resumed = (row.split(",")[3:] for row in rows[1:])
    assert resumed != first  # the resumed sampler does not repeat the first process's draws
    assert yaml.safe_load((tmp_path / "tuning.yaml").read_text())["steps"] == 256
    other = subprocess.run([*command, "--trials", "4", "--set", "contact_weight=0"], check=False, capture_output=True,
                           text=True, timeout=600)  # resuming with other settings would mix scores of two problems
    assert other.returncode != 0 and "env_kwargs" in other.stderr
    assert len((tmp_path / "trials.csv").read_text().strip().splitlines()) == 1 + 3
