"""One method interface above the envs: the registry, the run directory, defaults in one place."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffenvs.baselines import method as methods
from diffenvs.baselines.method import Method, Request, SequencePolicy, get_method, method_names, register
from diffenvs.baselines.rundir import CURVE_COLUMNS, SUMMARY_KEYS, RunWriter, read_run, upgrade_run
from diffenvs.config import ConfigError, read_yaml, to_dict
from diffenvs.configs import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_method_resolves_on_every_id_and_the_cli_offers_exactly_them():
    import diffenvs
    from diffenvs.cli import build_parser

    assert set(method_names()) == set(method_names("optimizer")) | set(method_names("learner"))
    for name in method_names():
        method = get_method(name)
        assert method.name == name and method.kind == methods.method_kind(name)
        for info in diffenvs.ENVS:
            resolved = method.resolve(Request(env_id=info.id, budget=10_000))
            assert json.loads(json.dumps(resolved)) == resolved  # what job.json and config.yaml record
    choices = {action.dest: action.choices for sub in build_parser()._subparsers._group_actions
               for parser in sub.choices.values() for action in parser._actions if action.dest in ("method", "algo")}
    assert tuple(choices["method"]) == method_names("optimizer") and tuple(choices["algo"]) == method_names("learner")
    with pytest.raises(ConfigError, match="unknown method 'adma'"):
        get_method("adma")


def test_every_optimizer_has_an_algorithm():
    from diffenvs.baselines import trajopt

    assert set(method_names("optimizer")) == set(trajopt._ALGORITHMS)


def test_a_missing_optional_install_names_its_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cma" else real(name, *a))
    monkeypatch.setattr(methods, "_LOADED", {})
    assert methods.missing_requirements("cmaes") == "method 'cmaes' needs cma: pip install 'diffenvs[rl]'"
    with pytest.raises(ConfigError, match=r"diffenvs\[rl\]"):
        get_method("cmaes")
    assert methods.missing_requirements("adam") is None


def _leaves(values, prefix=()):
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("env_kwargs", "remedies", "remedies_final"):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


@pytest.mark.parametrize("name, cls", [("optimize.yaml", "RunConfig"), ("demo.yaml", "DemoConfig")])
def test_a_config_file_restates_no_default_of_its_dataclasses(name, cls):
    """Defaults live in the dataclasses; the YAML holds what differs (per env id), so the two cannot drift."""
    from diffenvs.baselines import demo, runner

    defaults = to_dict({"RunConfig": runner.RunConfig, "DemoConfig": demo.DemoConfig}[cls]())
    values = read_yaml(CONFIG_DIR / name)
    sections = [values] + list((values.pop("per_env", None) or {}).values())
    for section in sections:
        for path, value in _leaves(section):
            default = defaults
            for key in path:
                default = default[key]
            assert value != default, f"{name}: {'.'.join(path)}: {value!r} restates the default"


def test_the_cli_and_the_python_api_run_the_same_method(tmp_path, capsys):
    from diffenvs.cli import main

    assert main(["optimize", "--method", "cem", "--seed", "1", "--horizon", "20", "--iters", "2", "--out-dir",
                 str(tmp_path), "--run-name", "cli", "--no-gif", "--no-plot", "--no-progress"]) == 0
    run = get_method("cem").solve(Request(env_id="DiffEnvs/Pusher-v0", seed=1, instance=1,
                                          options={"problem.horizon": 20, "solver.iters": 2}), tmp_path / "api")
    cli = read_run(tmp_path / "cli")
    assert cli.metric == run.metric and cli.summary["env_steps"] == run.summary["env_steps"]
    assert read_yaml(tmp_path / "cli" / "config.yaml")["resolved"] == read_yaml(tmp_path / "api" / "config.yaml")["resolved"]
    np.testing.assert_array_equal(np.load(tmp_path / "cli" / "best.npz")["actions"],
                                  np.load(tmp_path / "api" / "best.npz")["actions"])


def test_mpc_is_counted_and_judged_as_every_method():
    """MPC executes its plans through the Problem: its budget counts them, and its metric is the task's
    metric of the executed sequence from the initial state, the same as a replay gives."""
    from diffenvs.baselines.problem import Problem, ProblemConfig
    from diffenvs.baselines.trajopt import GradientConfig, MPCConfig, SolverConfig, optimize

    problem = Problem(ProblemConfig(env_id="DiffEnvs/Pusher-v0", seed=3, horizon=12))
    result = optimize(problem, SolverConfig(method="mpc", mpc=MPCConfig(plan_horizon=6, iters_per_step=2, execute=4),
                                            gradient=GradientConfig(contact_weight=0.1)))
    replay = problem.evaluate(result.actions)
    assert result.metric == pytest.approx(float(replay.metric[0])) and result.loss == pytest.approx(float(replay.loss[0]))
    assert result.budget["eval_steps"] == 12 and result.budget["rollouts"] == 3 * 2 + 1
    problem.close()


class _Zeros(Method):
    """A method added by a user: the all-zero sequence, judged by one replay."""

    kind = "optimizer"

    def resolve(self, request):
        return {"actions": 0.0}

    def solve(self, request, run_dir, *, progress=False):
        from diffenvs.baselines.problem import Problem, ProblemConfig

        problem = Problem(ProblemConfig(env_id=request.env_id, seed=request.instance, env_kwargs=dict(request.env_kwargs)))
        actions = np.zeros(problem.action_shape)
        evaluation = problem.evaluate(actions)
        writer = RunWriter(run_dir, method=self, request=request, resolved=self.resolve(request),
                           metric_name=problem.metric_name)
        writer.point(problem.budget.env_steps, problem.budget.wall_time, float(evaluation.metric[0]))
        np.savez(Path(run_dir) / "best.npz", actions=actions)
        problem.close()
        return writer.finish("finished", artifact="best.npz")

    def load(self, run_dir):
        return SequencePolicy(np.load(Path(run_dir) / "best.npz")["actions"])


def test_a_new_method_is_one_registration_and_its_own_module(tmp_path, monkeypatch):
    """Registered, a method runs in a study, is reported and replayed, with no other change."""
    from diffenvs.baselines.execution import _store, execute
    from diffenvs.baselines.report import write_report
    from diffenvs.baselines.robustness import run_robustness
    from diffenvs.baselines.study import StudyConfig, jobs, load_study

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    monkeypatch.setattr(methods, "_LOADED", dict(methods._LOADED))
    register("zeros", f"{__name__}:_Zeros", kind="optimizer")
    path = tmp_path / "study.yaml"
    path.write_text("name: z\nenvs: [DiffEnvs/Pusher-v0]\nseeds: [0, 1]\nbootstrap_reps: 200\n"
                    f"out_dir: {tmp_path / 's'}\nmethods: {{zeros: {{method: zeros, budget: 100}}}}\n")
    config: StudyConfig = load_study(path)
    assert config.methods["zeros"].kind == "optimize"
    for job in jobs(config):
        (tmp_path / "s" / "runs").mkdir(parents=True, exist_ok=True)
        _store(tmp_path / "s" / "runs", job.name, execute(job))
    assert "| zeros | 100 |" in write_report(config).read_text()
    csv_path, _ = run_robustness(config, noise=(0.0, 0.1), episodes=2, progress=False)
    with open(csv_path, encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 4


def _old_optimizer_run(path: Path) -> None:
    path.mkdir(parents=True)
    rows = [{"phase": "adam", "iteration": i, "env_steps": 40 * (i + 1), "wall_time": 0.1 * (i + 1), "loss": 1 - 0.1 * i,
             "metric": 0.1 * i, "best_loss": 1 - 0.1 * i, "best_metric": 0.1 * i} for i in range(3)]
    with open(path / "history.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (path / "summary.json").write_text(json.dumps({
        "status": "finished", "env_id": "DiffEnvs/Pusher-v0", "method": "adam", "seed": 1, "horizon": 20,
        "metric_name": "loss_reduction", "initial_loss": 1.0, "iterations": 3, "best_loss": 0.8, "best_metric": 0.2,
        "budget": {"env_steps": 120}, "stopped": None}))
    (path / "result.json").write_text(json.dumps({"env_id": "DiffEnvs/Pusher-v0", "method": "adam", "kind": "optimize",
                                                  "algorithm": "adam", "seed": 1, "status": "finished", "metric": 0.2,
                                                  "env_steps": 120, "wall_time": 0.3}))
    (path / "curve.csv").write_text("env_steps,wall_time,metric\n40,0.100,0.0\n80,0.200,0.1\n120,0.300,0.2\n")
    np.savez(path / "best.npz", actions=np.zeros((20, 2)))


def _old_learner_run(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "evaluations.csv").write_text("env_steps,wall_time,return_mean,metric_mean,return_seed4,metric_seed4\n"
                                          "0,0.500,-1.0,0.1,-1.0,0.1\n5000,9.000,-0.5,0.6,-0.5,0.6\n"
                                          "10000,17.000,-0.7,0.4,-0.7,0.4\n")
    (path / "summary.json").write_text(json.dumps({
        "status": "finished", "env_id": "DiffEnvs/Pusher-v0", "algo": "ppo", "seed": 4, "env_steps": 10000,
        "wall_time": 18.0, "last_evaluation": {}, "best_evaluation": {}}))
    (path / "config.yaml").write_text("instance: 4\n")


def test_runs_of_older_layouts_are_converted_with_their_figures(tmp_path, capsys):
    from diffenvs.cli import main

    _old_optimizer_run(tmp_path / "runs" / "Pusher-adam-s1")
    _old_learner_run(tmp_path / "runs" / "Pusher-ppo-s4")
    with pytest.raises(ConfigError, match="upgrade-runs"):
        read_run(tmp_path / "runs" / "Pusher-adam-s1")
    assert main(["upgrade-runs", str(tmp_path / "runs")]) == 0
    assert "2 converted" in capsys.readouterr().out
    adam, ppo = read_run(tmp_path / "runs" / "Pusher-adam-s1"), read_run(tmp_path / "runs" / "Pusher-ppo-s4")
    for run in (adam, ppo):
        assert list(run.summary)[:len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
        with open(run.path / "curve.csv", encoding="utf-8") as handle:
            assert next(csv.reader(handle)) == list(CURVE_COLUMNS)
        assert (run.path / "log.csv").exists() and not (run.path / "result.json").exists()
    assert adam.metric == 0.2 and adam.summary["env_steps"] == 120 and adam.summary["wall_time"] == 0.3
    assert adam.summary["artifact"] == "best.npz" and adam.summary["best_loss"] == 0.8
    assert ppo.metric == 0.6 and ppo.summary["final_metric"] == 0.4 and ppo.summary["instance"] == 4
    assert ppo.summary["metric_name"] == "loss_reduction" and ppo.summary["artifact"] is None  # model not here
    np.testing.assert_array_equal(ppo.curve[:, 3], [0.1, 0.6, 0.6])
    assert not upgrade_run(adam.path)  # already current: nothing to do
    assert main(["upgrade-runs", str(tmp_path / "nothing")]) == 2


def test_the_committed_study_reports_regenerate(tmp_path):
    """``--report-only`` over the committed results writes the committed report, figure for figure."""
    from diffenvs.cli import main

    for name in ("full", "generalize", "breadth", "stages"):
        committed = ROOT / "results" / name
        copy = tmp_path / name
        shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.png"))
        assert main(["compare", "--config", name, "--out-dir", str(copy), "--report-only"]) == 0
        assert (copy / "report.md").read_text() == (committed / "report.md").read_text(), name
        assert (copy / "final.csv").read_text() == (committed / "final.csv").read_text(), name


def test_the_committed_runs_are_the_runs_their_study_configs_ask_for():
    """A restarted study skips a finished run only if its ``job.json`` matches the config's job: every
    committed run is one of its config's jobs and matches it (a changed default is pinned in the
    config, as ``return_mapping: svd``)."""
    from diffenvs.baselines.study import comparable, job_dict, jobs, load_study

    for name in ("full", "generalize", "generalize_long", "breadth", "stages"):
        config = load_study(CONFIG_DIR / "study" / f"{name}.yaml", {"out_dir": str(ROOT / "results" / name)})
        checked = 0
        for job in jobs(config):
            recorded = ROOT / "results" / name / "runs" / job.name / "job.json"
            if recorded.exists():
                assert comparable(json.loads(recorded.read_text())) == comparable(job_dict(job)), recorded
                checked += 1
        assert checked == len(list((ROOT / "results" / name / "runs").glob("*/job.json"))) > 0, name


def test_requests_are_checked():
    with pytest.raises(ConfigError, match="eval_seeds"):
        Request(env_id="DiffEnvs/Pusher-v0", instance=None)
    with pytest.raises(ConfigError, match="budget"):
        Request(env_id="DiffEnvs/Pusher-v0", budget=0)
    request = Request(env_id="DiffEnvs/Pusher-v0", instance=None, eval_seeds=(5, 6))
    assert request.judged_on == (5, 6) and dataclasses.replace(request, instance=2).judged_on == (2,)
    with pytest.raises(ConfigError, match="chosen by the request"):
        get_method("adam").resolve(Request(env_id="DiffEnvs/Pusher-v0", options={"solver.seed": 3}))


def test_a_study_checks_only_the_methods_it_runs(tmp_path, monkeypatch, capsys):
    """Without stable-baselines3, the quick study's optimizers still run and its report is written;
    a learner asks for the extra in one line, before anything is written."""
    import importlib.util

    from diffenvs.baselines.study import load_study
    from diffenvs.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "stable_baselines3" else real(name, *a))
    monkeypatch.setattr(methods, "_LOADED", {})
    quick = CONFIG_DIR / "study" / "quick.yaml"
    with pytest.raises(ConfigError, match=r"ppo.*pip install 'diffenvs\[rl\]'"):
        load_study(quick)
    assert load_study(quick, methods=["adam"]).methods["ppo"].method == "ppo"
    out = tmp_path / "q"
    assert main(["compare", "--config", "quick", "--out-dir", str(out), "--report-only"]) == 0
    assert main(["compare", "--config", "quick", "--out-dir", str(out), "--methods", "ppo", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'diffenvs[rl]'" in err and "Traceback" not in err
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())
