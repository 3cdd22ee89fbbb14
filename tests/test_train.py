"""RL baselines: `diffenvs train`, its run directory, the rl-zoo3 hyperparameter files."""

from __future__ import annotations

import csv
import json
import tempfile

import pytest

import diffenvs
from diffenvs.baselines.learner import TrainConfig, evaluate_policy_on_instances, run_train
from diffenvs.baselines.rl import SB3_ALGOS, algo_kwargs, load_hyperparams, parse_call_dict
from diffenvs.config import ConfigError, read_yaml
from diffenvs.configs import CONFIG_DIR
from tests.conftest import SMALL


def _rows(run_dir):
    with open(run_dir / "log.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_ppo_learns_the_pusher(tmp_path):
    """A learning threshold: 30,000 env steps of PPO (a few seconds) lift the deterministic policy's
    task metric on the evaluation instances well above the untrained policy's."""
    run = run_train(TrainConfig(steps=30_000, eval_every=15_000, out_dir=str(tmp_path), run_name="ppo"), progress=False)
    assert run.status == "finished" and run.env_steps >= 30_000
    first, last = run.evaluations[0], run.evaluations[-1]
    assert last["metric_mean"] > first["metric_mean"] + 0.15, (first, last)
    rows = _rows(run.run_dir)
    assert [int(r["env_steps"]) for r in rows][:2] == [0, 15_008] and len(rows) == len(run.evaluations)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and (run.run_dir / "model.zip").exists()
    # the best evaluation's policy is kept and replays to its metric
    import stable_baselines3

    best = max(run.evaluations, key=lambda e: e["metric_mean"])
    assert summary["metric"] == pytest.approx(best["metric_mean"]) and summary["artifact"] == "best_model.zip"
    assert summary["final_metric"] == pytest.approx(last["metric_mean"]) and summary["env_steps"] == run.env_steps
    assert run.run.curve[:, 3].max() == pytest.approx(best["metric_mean"])  # curve.csv's best_metric
    replay = evaluate_policy_on_instances(stable_baselines3.PPO.load(run.run_dir / "best_model.zip"), "DiffEnvs/Pusher-v0",
                                          (0, 1, 2), {})
    assert replay["metric_mean"] == pytest.approx(best["metric_mean"])
    assert "resolved" in (run.run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_off_policy_algorithms_run_and_write_their_run(tmp_path, algo, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # SB3's default logger makes a folder there
    config = TrainConfig(algo=algo, steps=300, eval_every=200, eval_seeds=(0,), out_dir=str(tmp_path), run_name=algo,
                         hyperparams={"learning_starts": 100, "batch_size": 32})
    run = run_train(config, progress=False)
    # SB3 collects whole rollouts of train_freq steps: the budget rounds up to one, as PPO's to n_steps
    train_freq = load_hyperparams(algo, config.env_id)["train_freq"]
    assert run.status == "finished" and 300 <= run.env_steps < 300 + train_freq
    assert [e["env_steps"] for e in run.evaluations] == [0, 200, run.env_steps]
    assert (run.run_dir / "model.zip").exists()
    assert not list(temp.glob("SB3-*"))  # no empty SB3-<date> folder left behind


def test_ppo_on_dough_with_normalization(tmp_path):
    env_id = "DiffEnvs/RollingPin-v0"
    config = TrainConfig(env_id=env_id, steps=64, n_envs=2, eval_every=64, eval_seeds=(0,), env_kwargs=SMALL[env_id],
                         hyperparams={"n_steps": 16, "batch_size": 16, "n_epochs": 1, "normalize": "dict(norm_reward=False)"},
                         out_dir=str(tmp_path), run_name="dough")
    run = run_train(config, progress=False)
    assert run.evaluations[-1]["metric_name"] == "iou_incremental"
    assert (run.run_dir / "vecnormalize.pkl").exists()


def test_training_on_one_instance_evaluates_on_it(tmp_path):
    run = run_train(TrainConfig(steps=512, n_envs=4, instance=5, eval_every=512, out_dir=str(tmp_path), run_name="one",
                                hyperparams={"n_steps": 64, "batch_size": 64, "n_epochs": 1}), progress=False)
    header = _rows(run.run_dir)[0].keys()
    assert [k for k in header if k.startswith("metric_seed")] == ["metric_seed5"]


def test_ctrl_c_saves_the_model_and_the_summary(tmp_path, monkeypatch):
    import stable_baselines3

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stable_baselines3.PPO, "learn", interrupted)
    run = run_train(TrainConfig(steps=1000, out_dir=str(tmp_path), run_name="stop"), progress=False)
    assert run.status == "interrupted" and (run.run_dir / "model.zip").exists()
    assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert len(_rows(run.run_dir)) == 1  # the untrained evaluation


@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_every_algorithm_has_rl_zoo3_hyperparameters_for_every_id(algo):
    for info in diffenvs.ENVS:
        section = load_hyperparams(algo, info.id)
        kwargs, special = algo_kwargs(section, where=algo)
        assert special["n_timesteps"] >= 1e4 and special["n_envs"] >= 1 and special["policy"] == "MlpPolicy"
        assert "n_timesteps" not in kwargs and isinstance(special.get("policy_kwargs", {}), dict)


def test_bad_configs_name_their_key(tmp_path):
    with pytest.raises(ConfigError, match="algo"):
        TrainConfig(algo="dqn")
    with pytest.raises(ConfigError, match="differentiable"):
        TrainConfig(env_kwargs={"differentiable": True})
    with pytest.raises(ConfigError, match="no section"):
        load_hyperparams("ppo", "DiffEnvs/Nope-v0")
    with pytest.raises(ConfigError, match="policy_kwargs"):
        algo_kwargs({"policy_kwargs": "dict(net_arch=__import__('os'))"}, where="x")
    with pytest.raises(ConfigError, match="noise_type"):
        algo_kwargs({"noise_type": "ornstein-uhlenbeck"}, where="x")
    assert parse_call_dict("dict(net_arch=[64, 64], log_std_init=-1.0)", where="x") == {"net_arch": [64, 64], "log_std_init": -1.0}
    with pytest.raises(ConfigError, match="unknown env id"):
        run_train(TrainConfig(env_id="DiffEnvs/Nope-v0", out_dir=str(tmp_path)), progress=False)


def test_random_instances_values_replace_a_section_only_when_training_on_random_instances(tmp_path):
    """The values for training on random instances live in configs/rl/random_instances.yaml, not in the
    rl-zoo3 files (rl-zoo3 would hand an extra key to the algorithm); a file of one's own gets none."""
    one = load_hyperparams("shac", "DiffEnvs/Pusher-v0")
    extra = read_yaml(CONFIG_DIR / "rl" / "random_instances.yaml")["shac"]["DiffEnvs/Pusher-v0"]
    assert load_hyperparams("shac", "DiffEnvs/Pusher-v0", random_instances=True) == {**one, **extra}
    assert extra["remedies_final"] != one["remedies_final"]
    own = tmp_path / "shac.yaml"
    own.write_text("DiffEnvs/Pusher-v0:\n  window: 8\n")
    assert load_hyperparams("shac", "DiffEnvs/Pusher-v0", own, random_instances=True) == {"window": 8}
    for path in (CONFIG_DIR / "rl").glob("*.yaml"):
        if path.name != "random_instances.yaml":
            assert all("random_instances" not in section for section in read_yaml(path).values()), path


@pytest.mark.slow
@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_rl_zoo3_trains_our_ids_from_our_hyperparameter_files(tmp_path, algo):
    """The files are rl-zoo3's format: its own train command runs them unchanged on our ids."""
    import subprocess
    import sys

    pytest.importorskip("rl_zoo3")
    from diffenvs.configs import CONFIG_DIR

    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", "DiffEnvs/Pusher-v0", "--gym-packages",
               "diffenvs", "--conf-file", str(CONFIG_DIR / "rl" / f"{algo}.yaml"), "-n", "300", "--seed", "0",
               "--log-folder", str(tmp_path), "--eval-freq", "-1"]
    if algo != "ppo":
        command += ["--hyperparams", "learning_starts:100"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(tmp_path.glob(f"{algo}/DiffEnvs-Pusher-v0_1/DiffEnvs-Pusher-v0.zip"))


@pytest.mark.parametrize("algo", ["apg", pytest.param("shac", marks=pytest.mark.slow)])
def test_policies_through_the_simulator_learn_the_pusher(tmp_path, algo):
    """A learning threshold for APG and SHAC: within seconds (about 100,000 env steps, forward and
    backward counted) the deterministic policy's metric on instances 0-2 rises well above the
    untrained policy's; the run directory is the RL runs' (state dicts instead of zip files)."""
    run = run_train(TrainConfig(algo=algo, steps=98_304, eval_every=49_152, out_dir=str(tmp_path), run_name=algo),
                    progress=False)
    assert run.status == "finished" and run.env_steps == 98_304
    first, best = run.evaluations[0], max(run.evaluations, key=lambda e: e["metric_mean"])
    assert [e["env_steps"] for e in run.evaluations] == [0, 49_152, 98_304]
    assert best["metric_mean"] > first["metric_mean"] + 0.1, run.evaluations
    for name in ("model.pt", "best_model.pt", "curve.csv", "log.csv", "summary.json", "config.yaml"):
        assert (run.run_dir / name).exists()
    import csv
    import math

    from diffenvs.baselines.diffrl import TRAIN_LOG_WINDOWS, Agent, diffrl_config, window_cost
    from diffenvs.baselines.rl import load_hyperparams

    windows = 98_304 // window_cost(diffrl_config(load_hyperparams(algo, "DiffEnvs/Pusher-v0"), {}, where=algo))
    with open(run.run_dir / "train.csv", encoding="utf-8") as handle:  # one row per TRAIN_LOG_WINDOWS windows, the last one's rest
        rows = list(csv.DictReader(handle))
    steps = [int(row["env_steps"]) for row in rows]
    assert len(rows) == -(-windows // TRAIN_LOG_WINDOWS) and steps[-1] == 98_304 and steps == sorted(steps)
    expected = {"actor_loss", "grad_norm", "saturated", "reward"} | ({"critic_loss", "value", "std"} if algo == "shac" else set())
    assert set(rows[0]) == {"env_steps", *expected}
    assert all(0 <= float(row["saturated"]) <= 1 for row in rows)
    assert all(math.isfinite(float(value)) for row in rows for value in row.values())

    replay = evaluate_policy_on_instances(Agent.load(run.run_dir / "best_model.pt"), "DiffEnvs/Pusher-v0", (0, 1, 2))
    assert replay["metric_mean"] == pytest.approx(best["metric_mean"], abs=1e-6)


def test_through_sim_configs_cover_every_id_and_reject_bad_keys(tmp_path):
    from diffenvs.baselines.diffrl import DIFF_ALGOS, diffrl_config

    for algo in DIFF_ALGOS:
        for info in diffenvs.ENVS:
            for random_instances in (False, True):
                section = load_hyperparams(algo, info.id, random_instances=random_instances)
                config = diffrl_config(section, {}, where=algo)
                assert config.n_timesteps >= 1e4 and config.remedies
    with pytest.raises(ConfigError, match="windw"):
        run_train(TrainConfig(algo="apg", steps=10, hyperparams={"windw": 3}, out_dir=str(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="remedies"):
        run_train(TrainConfig(algo="shac", steps=10, hyperparams={"remedies": {"stickiness": 1.0}}, out_dir=str(tmp_path),
                              run_name="bad"), progress=False)
