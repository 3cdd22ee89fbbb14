"""The comparison study: `diffenvs compare`, its protocol, resuming, the Ray backend and the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from diffenvs.baselines.execution import run_study
from diffenvs.baselines.report import RunRecord, first_reaching, interval, summarize, write_report
from diffenvs.baselines.study import MethodSpec, StudyConfig, job_dict, jobs, load_study
from diffenvs.config import ConfigError, write_yaml

TINY = {
    "name": "tiny",
    "envs": ["DiffEnvs/Pusher-v0"],
    "seeds": [0, 1],
    "methods": {
        "adam": {"kind": "optimize", "method": "adam", "budget": 400},
        "cem": {"kind": "optimize", "method": "cem", "budget": 800, "set": {"solver.cem.population": 4, "solver.cem.elites": 2}},
        "ppo": {"kind": "train", "method": "ppo", "budget": 256, "eval_every": 128,
                "set": {"n_envs": 4, "n_steps": 32, "batch_size": 64, "n_epochs": 1}},
    },
    "workers": 2,
    "bootstrap_reps": 200,
}


def _write(tmp_path, values, name="study.yaml"):
    path = tmp_path / name
    write_yaml(path, values)
    return path


def _table(out_dir, drop=("wall_time",)):
    with open(out_dir / "final.csv", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("change, key", [
    ({"methdos": {}}, "methdos"),
    ({"envs": ["DiffEnvs/Nope-v0"]}, "Nope"),
    ({"methods": {"adam": {"kind": "optimize", "method": "adma", "budget": 10}}}, "adma"),
    ({"methods": {"adam": {"kind": "optimize", "method": "adam", "budjet": 10}}}, "budjet"),
    ({"methods": {"adam": {"kind": "optimize", "method": "adam", "budget": 10, "set": {"solver.cem.populaton": 3}}}},
     "populaton"),
    ({"methods": {"ppo": {"kind": "train", "method": "ppo", "budget": 10, "set": {"n_step": 3}}}}, "n_step"),
    ({"methods": {"adam": {"kind": "optimize", "method": "adam", "budget": 10, "set": {"solver.budget": 3}}}},
     "solver.budget"),
    ({"env_kwargs": {"DiffEnvs/Move-v0": {}}}, "Move"),
    ({"seeds": [0, 0]}, "seeds"),
])
def test_a_malformed_config_fails_before_any_run_naming_the_bad_key(tmp_path, change, key):
    path = _write(tmp_path, {**TINY, "out_dir": str(tmp_path / "out"), **change})
    with pytest.raises(ConfigError, match=key):
        load_study(path)
    assert not (tmp_path / "out").exists()


def _processes_with_env(entry):
    """PIDs of this machine's processes whose environment holds ``entry`` (Linux: /proc)."""
    from pathlib import Path

    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # ended meanwhile, or not ours
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_a_killed_study_stops_its_running_worker(tmp_path):
    """`kill` reaches the study process only (Ctrl-C reaches its workers too): the worker must
    interrupt its run, remove the scratch directory and exit, not train on for a result nobody stores."""
    import os
    import signal
    import subprocess
    import time

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    values = {**TINY, "seeds": [0], "workers": 1, "out_dir": str(tmp_path / "s"),
              "methods": {"random": {"kind": "optimize", "method": "random", "budget": 10_000_000}}}  # hours
    study = subprocess.Popen([sys.executable, "-m", "diffenvs.cli", "compare", "--config", str(_write(tmp_path, values)),
                              "--no-progress"], env={**os.environ, "TMPDIR": str(scratch)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not list(scratch.glob("diffenvs-run-*/run/*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(scratch.glob("diffenvs-run-*/run/*")), "the worker did not start its run"
        assert [pid for pid in _processes_with_env(f"TMPDIR={scratch}") if pid != study.pid], "no worker found"
        study.send_signal(signal.SIGTERM)
        assert study.wait(timeout=30) == -signal.SIGTERM
        deadline = time.monotonic() + 60
        while (_processes_with_env(f"TMPDIR={scratch}") or list(scratch.glob("diffenvs-run-*"))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not list(scratch.glob("diffenvs-run-*")), "the run's scratch directory was left behind"
        assert not _processes_with_env(f"TMPDIR={scratch}"), "a worker outlived its study"
        assert not (tmp_path / "s" / "runs" / "Pusher-random-s0").exists()
    finally:
        for pid in _processes_with_env(f"TMPDIR={scratch}"):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
@pytest.mark.parametrize("target", ["study process", "process group"])
def test_ctrl_c_stops_the_study_its_runs_and_its_queue_within_seconds(tmp_path, target):
    """SIGINT to the study process alone (``kill -INT``) or to its process group (a terminal's Ctrl-C),
    with two runs in flight and one queued behind them: every run is interrupted, nothing is stored,
    no scratch directory or worker is left, and ``diffenvs compare`` exits with 130 within seconds."""
    import os
    import signal
    import subprocess
    import time

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    values = {**TINY, "seeds": [0, 1, 2], "workers": 2, "out_dir": str(tmp_path / "s"),
              "methods": {"random": {"method": "random", "budget": 10_000_000}}}  # hours each
    # SIGINT at its default in the study process, as in a terminal: a suite started in the background of a
    # shell without job control (`pytest &` in a script) inherits SIGINT ignored, and Python keeps it so
    study = subprocess.Popen([sys.executable, "-m", "diffenvs.cli", "compare", "--config", str(_write(tmp_path, values)),
                              "--no-progress"], env={**os.environ, "TMPDIR": str(scratch)}, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509  (one call, no lock)
    try:
        deadline = time.monotonic() + 180
        while len(list(scratch.glob("diffenvs-run-*/run/curve.csv"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(scratch.glob("diffenvs-run-*/run/curve.csv"))) == 2, "the two workers did not start their runs"
        time.sleep(1.0)  # well inside the runs
        start = time.monotonic()
        if target == "study process":
            study.send_signal(signal.SIGINT)
        else:
            os.killpg(study.pid, signal.SIGINT)
        _, err = study.communicate(timeout=60)
        elapsed = time.monotonic() - start
        assert study.returncode == 130, err
        assert elapsed < 30, f"took {elapsed:.1f} s to stop"
        assert "interrupted" in err and "resume" in err
        assert not list(scratch.glob("diffenvs-run-*")), "a run's scratch directory was left behind"
        assert not _processes_with_env(f"TMPDIR={scratch}"), "a worker outlived its study"
        assert not [p for p in (tmp_path / "s" / "runs").iterdir()], "an interrupted run was stored"
    finally:
        if study.poll() is None:
            study.kill()
        for pid in _processes_with_env(f"TMPDIR={scratch}"):
            os.kill(pid, signal.SIGKILL)


_ORPHAN_SCRIPT = """
import concurrent.futures, multiprocessing, sys, time
from pathlib import Path
from diffenvs.baselines import scheduler

def init():
    scheduler.ORPHAN_GRACE_S = 1.0
    scheduler.die_with_parent()

def block(marker):
    with scheduler.scratch() as scratch:
        Path(marker).write_text(scratch)
        time.sleep(600)  # a native call the interrupt must wait for (as a Warp module compiling)

if __name__ == "__main__":
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=init)
    pool.submit(block, sys.argv[1]).result()
"""


def test_an_orphaned_worker_stuck_in_a_native_call_still_removes_its_scratch(tmp_path):
    """The interrupt of a killed study cannot reach a worker inside a long native call: after the
    grace period the watcher removes the run's scratch directory itself and ends the process."""
    import os
    import signal
    import subprocess
    import time

    scratch, marker, script = tmp_path / "scratch", tmp_path / "marker", tmp_path / "orphan.py"
    scratch.mkdir()
    script.write_text(_ORPHAN_SCRIPT)
    study = subprocess.Popen([sys.executable, str(script), str(marker)], env={**os.environ, "TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the worker did not start"
        run_scratch = Path(marker.read_text())
        assert run_scratch.is_dir() and run_scratch.parent == scratch
        study.send_signal(signal.SIGKILL)
        study.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (_processes_with_env(f"TMPDIR={scratch}") or run_scratch.exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not run_scratch.exists(), "the stuck worker's scratch directory was left behind"
        assert not _processes_with_env(f"TMPDIR={scratch}"), "the stuck worker outlived its study"
    finally:
        for pid in _processes_with_env(f"TMPDIR={scratch}"):
            os.kill(pid, signal.SIGKILL)


def test_the_study_runs_every_method_on_the_same_instances_and_resumes(tmp_path):
    config = load_study(_write(tmp_path, TINY), {"out_dir": str(tmp_path / "study")})
    out = tmp_path / "study"
    first = run_study(config, progress=False)
    assert not first.failed and sorted(first.ran) == sorted(job.name for job in jobs(config)) and not first.skipped
    # every run judged on its instance, and it spent its budget (here every budget is a whole number of iterations)
    for job in jobs(config):
        result = json.loads((out / "runs" / job.name / "summary.json").read_text())
        assert result["status"] == "finished" and result["seed"] == job.seed
        assert result["env_steps"] == job.spec.budget
    run_config = (out / "runs" / "Pusher-adam-s1" / "config.yaml").read_text()
    assert "seed: 1" in run_config and "budget: 400" in run_config
    ppo = (out / "runs" / "Pusher-ppo-s1" / "config.yaml").read_text()
    assert "instance: 1" in ppo
    report = (out / "report.md").read_text()
    assert "## DiffEnvs/Pusher-v0" in report and report.count("| adam | 400 |") == 1
    assert (out / "steps.png").stat().st_size > 0 and (out / "time.png").stat().st_size > 0
    table = _table(out)
    assert len(table) == 6

    # a restart with nothing left skips every run and writes the same report, byte for byte
    again = run_study(config, progress=False)
    assert again.ran == [] and len(again.skipped) == 6
    assert (out / "report.md").read_text() == report

    # killed while one run was in flight: its directory is absent, a half-written .tmp is left over
    shutil.rmtree(out / "runs" / "Pusher-cem-s0")
    (out / "runs" / ".Pusher-cem-s0.tmp").mkdir()
    (out / "runs" / ".Pusher-cem-s0.tmp" / "history.csv").write_text("iteration\n0\n")
    study_yaml = (out / "study.yaml").read_text()
    with pytest.raises(ConfigError, match="cme"):  # part of the study: labels and env ids of the study only
        run_study(config, methods=["cme"], progress=False)
    with pytest.raises(ConfigError, match="Move"):
        run_study(config, envs=["DiffEnvs/Move-v0"], progress=False)
    with pytest.raises(ConfigError, match=r"seeds \[5\]"):
        run_study(config, seeds=[5], progress=False)
    adam_only = run_study(config, methods=["adam"], progress=False)
    assert adam_only.ran == [] and sorted(adam_only.skipped) == ["Pusher-adam-s0", "Pusher-adam-s1"]
    assert (out / "runs" / ".Pusher-cem-s0.tmp").exists()  # another part's run in flight is not its to remove
    assert "5 of 6 runs finished" in (out / "report.md").read_text()  # the report is the whole study's
    partial = (out / "report.md").read_text()
    assert ") (1 of 2 instances) |" in partial.split("| cem |")[1].splitlines()[0]  # a row short of its instances says so
    assert "instances)" not in partial.split("| adam |")[1].splitlines()[0]
    resumed = run_study(config, methods=["cem"], envs=["DiffEnvs/Pusher-v0"], seeds=[0], progress=False)
    assert resumed.ran == ["Pusher-cem-s0"] and resumed.skipped == []
    assert (out / "study.yaml").read_text() == study_yaml  # a part does not rewrite the study's config
    assert not list((out / "runs").glob(".*.tmp"))
    assert _table(out) == table  # the same results: runs are deterministic in their seeds
    assert "6 of 6 runs finished" in (out / "report.md").read_text()  # and the whole study's report again

    # another config must not write into this study's runs
    changed = StudyConfig(**{**config.__dict__, "methods": {**config.methods, "adam": MethodSpec("optimize", "adam", 800)}})
    with pytest.raises(ConfigError, match="Pusher-adam-s0"):
        run_study(changed, progress=False)


@pytest.mark.slow
def test_the_ray_backend_writes_the_same_result_files(tmp_path):
    pytest.importorskip("ray")
    values = {**TINY, "seeds": [0], "methods": {k: TINY["methods"][k] for k in ("adam", "ppo")}}
    pool = run_study(load_study(_write(tmp_path, values), {"out_dir": str(tmp_path / "pool")}), progress=False)
    ray = run_study(load_study(_write(tmp_path, values), {"out_dir": str(tmp_path / "ray")}), backend="ray", progress=False)
    assert not pool.failed and not ray.failed
    for name in ("Pusher-adam-s0", "Pusher-ppo-s0"):
        files = sorted(p.name for p in (tmp_path / "pool" / "runs" / name).iterdir())
        assert files == sorted(p.name for p in (tmp_path / "ray" / "runs" / name).iterdir())
        for study in ("pool", "ray"):
            assert (tmp_path / study / "runs" / name / "job.json").read_text() == \
                (tmp_path / "pool" / "runs" / name / "job.json").read_text()
        results = [json.loads((tmp_path / s / "runs" / name / "summary.json").read_text()) for s in ("pool", "ray")]
        for result in results:
            result.pop("wall_time")
            result.get("budget", {}).pop("wall_time", None)
        assert results[0] == results[1]
    assert _table(tmp_path / "pool") == _table(tmp_path / "ray")


def _record(method, seed, metric, curve):
    curve = np.array(curve, dtype=float)
    return RunRecord(env_id="DiffEnvs/Pusher-v0", method=method, seed=seed, metric=metric, env_steps=int(curve[-1, 0]),
                     wall_time=float(curve[-1, 1]), curve=curve)


def test_the_report_gives_intervals_and_the_cost_of_reaching_the_best():
    config = StudyConfig(name="t", envs=("DiffEnvs/Pusher-v0",), seeds=(0, 1, 2, 3, 4), bootstrap_reps=500,
                         methods={"fast": MethodSpec("optimize", "adam", 100), "slow": MethodSpec("train", "ppo", 100)})
    records = [_record("fast", s, 1.0, [[10, 1, 0.6], [20, 2, 1.0]]) for s in range(5)]
    records += [_record("slow", 0, 0.5, [[0, 0, 0.0], [50, 5, 0.5]]), _record("slow", 1, 0.95, [[0, 0, 0.0], [80, 8, 0.95]]),
                _record("slow", 2, 0.1, [[0, 0, 0.1]]), _record("slow", 3, 0.2, [[0, 0, 0.2]]),
                _record("slow", 4, 0.6, [[0, 0, 0.0], [60, 6, 0.6]])]
    rows = {row["method"]: row for row in summarize(config, records)["DiffEnvs/Pusher-v0"]}
    assert rows["fast"]["iqm"] == pytest.approx(1.0) and rows["fast"]["ci_low"] == pytest.approx(1.0)
    assert rows["fast"]["steps_50"] == 10 and rows["fast"]["steps_90"] == 20 and rows["fast"]["seconds_90"] == 2
    # slow: three of five instances reach 50% of the best (steps 50, 60 and 80; the median counts the two that never do)
    assert rows["slow"]["reached_50"] == 3 and rows["slow"]["steps_50"] == 80 and rows["slow"]["reached_90"] == 1
    assert math.isinf(rows["slow"]["steps_90"])
    low, high = rows["slow"]["ci_low"], rows["slow"]["ci_high"]
    assert low <= rows["slow"]["iqm"] <= high and low < high
    # fewer than five instances: no interval, the values themselves
    few = summarize(config, [r for r in records if r.seed < 3])["DiffEnvs/Pusher-v0"]
    assert all(math.isnan(row["ci_low"]) and row["cell"].n == 3 for row in few)
    assert first_reaching(np.array([[0, 0, 0.2], [5, 1, 0.7]]), 0.5) == (5.0, 1.0)
    first = interval([1.0, 2.0, 3.0, 4.0], reps=200)
    np.random.rand(7)  # a bootstrap drawing from NumPy's global generator would differ now
    assert interval([1.0, 2.0, 3.0, 4.0], reps=200) == first  # seeded
    spread = list(np.linspace(0.0, 1.0, 9) ** 2)
    assert interval(spread, reps=200, seed=1) != interval(spread, reps=200, seed=2)  # the seed is used


def test_across_tasks_pools_instances_with_a_stratified_bootstrap():
    """rliable's aggregate: one IQM over every task's instances, intervals from resampling within
    tasks, the probability of improvement averaged over tasks (ties a half); a method missing from a
    task is left out and named."""
    from diffenvs.baselines.report import Cell, across_tasks

    def row(method, values):
        return {"method": method, "cell": Cell(tuple(values), float(np.mean(values)), math.nan, math.nan)}

    tables = {"A": [row("hi", [1.0, 1.0, 1.0]), row("lo", [0.0, 0.0, 0.0]), row("mix", [0.0, 1.0, 0.5])],
              "B": [row("hi", [0.9, 0.9, 0.9]), row("lo", [0.9, 0.9, 0.9]), row("mix", [0.2, 0.4, 0.6])]}
    pooled = across_tasks({**tables, "C": [row("hi", [0.5]), row("lo", [0.5]), row("mix", [0.5])]}, reps=400)
    assert pooled["methods"][0] == "hi" and pooled["missing"] == []
    assert pooled["aggregate"]["hi"][3] == 7  # n: every instance value of every task
    pooled = across_tasks(tables, reps=400)
    assert pooled["aggregate"]["hi"] == (pytest.approx(0.95), pytest.approx(0.95), pytest.approx(0.95), 6)  # no spread within a task
    middle, low, high, _ = pooled["aggregate"]["mix"]
    assert low < middle < high
    # hi beats lo on A always, draws on B: P = (1 + 0.5) / 2; no resample can change either task
    assert pooled["improvement"][("hi", "lo")] == pytest.approx((0.75, 0.75, 0.75))
    assert pooled["improvement"][("lo", "hi")] == pytest.approx((0.25, 0.25, 0.25))
    point, low, high = pooled["improvement"][("mix", "lo")]  # A: 0 ties (a half), 1 and 0.5 win; B: all below 0.9
    assert point == pytest.approx((2.5 / 3 + 0.0) / 2) and low < point < high
    # the reverse pair from the same resamples: its interval mirrors the pair's
    assert pooled["improvement"][("lo", "mix")] == pytest.approx((1 - point, 1 - high, 1 - low))
    assert across_tasks(tables, reps=400) == pooled  # seeded
    spread = np.random.default_rng(0).uniform(size=(4, 6))  # many distinct chances: separate resamples would not mirror
    mirrored = across_tasks({t: [row("x", spread[t]), row("y", spread[2 + t])] for t in (0, 1)}, reps=200)["improvement"]
    assert mirrored[("y", "x")] == pytest.approx((1 - mirrored[("x", "y")][0], 1 - mirrored[("x", "y")][2], 1 - mirrored[("x", "y")][1]))
    partial = across_tasks({"A": tables["A"], "B": tables["B"][:2]}, reps=100)
    assert "mix" not in partial["methods"] and partial["missing"] == ["mix"]
    # the report's section, from summarize's tables of a study over three tasks, one without runs yet
    from diffenvs.baselines.report import _across_lines

    config = StudyConfig(name="t", envs=("DiffEnvs/Pusher-v0", "DiffEnvs/Move-v0", "DiffEnvs/Shape-v0"), seeds=(0, 1),
                         bootstrap_reps=100, methods={"a": MethodSpec("optimize", "adam", 100), "c": MethodSpec("optimize", "cem", 100)})
    records = [dataclasses.replace(_record(m, seed, v, [[10, 1, v]]), env_id=env)
               for env in config.envs[:2] for seed in (0, 1) for m, v in (("a", 0.8 + 0.1 * seed), ("c", 0.5))]
    text = "\n".join(_across_lines(summarize(config, records[:-1]), config))  # c lacks Move's instance 1: still on both
    assert "## Across tasks" in text and "(Pusher, Move; no runs yet on the study's other 1)" in text
    assert "| a | 4 | 0.850 [" in text and "| a | - | 1.00 [1.00, 1.00] |" in text
    # the overview: every cell with its n, a missing instance flagged
    from diffenvs.baselines.report import _overview_lines

    overview = "\n".join(_overview_lines(summarize(config, records[:-1]), config))
    assert "| method | Pusher | Move |" in overview
    assert "| a | 0.85 (runs: 0.80, 0.90), n = 2 | 0.85 (runs: 0.80, 0.90), n = 2 |" in overview
    assert "| c | 0.50 (runs: 0.50, 0.50), n = 2 | 0.50 (runs: 0.50), n = 1 of 2 |" in overview
    no_c_on_move = [r for r in records if not (r.method == "c" and r.env_id == "DiffEnvs/Move-v0")]
    assert "| c | 0.50 (runs: 0.50, 0.50), n = 2 | not yet |" in "\n".join(_overview_lines(summarize(config, no_c_on_move), config))


def test_compare_cli_reports_and_rejects(tmp_path, capsys):
    from diffenvs.cli import main

    path = _write(tmp_path, {**TINY, "out_dir": str(tmp_path / "out"), "methods": {"x": {"kind": "train", "method": "a2c",
                                                                                         "budget": 1}}})
    assert main(["compare", "--config", str(path)]) == 2
    assert "a2c" in capsys.readouterr().err
    # the shipped studies load, and --report-only writes a report from whatever runs exist
    for name in ("quick", "full", "generalize", "generalize_long", "horizon"):
        config = load_study(_shipped(name), {"out_dir": str(tmp_path / name)})
        assert "DiffEnvs/Pusher-v0" in config.envs and len(config.seeds) >= 3
        assert {"apg", "shac"} <= set(config.methods)
    full = load_study(_shipped("full"))
    assert all(spec.budget >= 10_000 for spec in full.methods.values())
    assert all(spec.budget >= 100_000 for spec in full.methods.values() if spec.kind == "train")
    assert set(full.envs) == {"DiffEnvs/Pusher-v0", "DiffEnvs/RollingPin-v0", "DiffEnvs/Move-v0", "DiffEnvs/Shape-v0"}
    for part in (["--methods", "adam"], ["--seeds", "0"]):
        assert main(["compare", "--config", "quick", "--out-dir", str(tmp_path / "q"), "--report-only", *part]) == 2
        assert "--report-only" in capsys.readouterr().err
    assert main(["compare", "--config", "quick", "--out-dir", str(tmp_path / "q"), "--report-only"]) == 0
    assert "0 of 42 runs finished" in (tmp_path / "q" / "report.md").read_text()
    write_report(load_study(_shipped("quick"), {"out_dir": str(tmp_path / "q")}))


def _shipped(name):
    from diffenvs.configs import CONFIG_DIR

    return CONFIG_DIR / "study" / f"{name}.yaml"


def test_an_interrupted_run_is_not_stored(tmp_path, monkeypatch):
    """Ctrl-C reaches the pool's workers: a run that returns as interrupted raises instead of
    returning files, so the driver does not count it as finished."""
    from diffenvs.baselines import execution, runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "optimize", interrupted)
    job = jobs(load_study(_write(tmp_path, TINY)))[0]
    with pytest.raises(execution.RunInterrupted, match=job.name):
        execution.execute(job)



def test_the_generalization_protocol_judges_policies_on_held_out_instances(tmp_path):
    values = {**TINY, "seeds": [0], "protocol": "generalize", "test_seeds": [1000, 1001], "methods": {
        "adam": {"kind": "optimize", "method": "adam", "budget": 800},
        "apg": {"kind": "train", "method": "apg", "budget": 2048, "eval_every": 1024, "set": {"n_envs": 4, "window": 16}}}}
    config = load_study(_write(tmp_path, values), {"out_dir": str(tmp_path / "gen")})
    result = run_study(config, progress=False)
    assert not result.failed
    runs = tmp_path / "gen" / "runs"
    # Adam: each held-out instance with half of the budget
    for instance in (1000, 1001):
        run_config = (runs / "Pusher-adam-s0" / f"instance-{instance}" / "config.yaml").read_text()
        assert f"seed: {instance}" in run_config and "budget: 400" in run_config
    adam = json.loads((runs / "Pusher-adam-s0" / "summary.json").read_text())
    assert adam["env_steps"] == 800 and adam["judged_on"] == [1000, 1001] and adam["instance"] is None
    # APG: trained on random instances, evaluated on the held-out ones, judged by its final policy
    with open(runs / "Pusher-apg-s0" / "log.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {"metric_seed1000", "metric_seed1001"} <= set(rows[0]) and [int(r["env_steps"]) for r in rows] == [0, 1024, 2048]
    apg = json.loads((runs / "Pusher-apg-s0" / "summary.json").read_text())
    assert apg["final_metric"] == pytest.approx(float(rows[-1]["metric_mean"]))
    final = {row["method"]: float(row["metric"]) for row in _table(tmp_path / "gen")}
    assert final["apg"] == pytest.approx(apg["final_metric"])  # the report judges the final policy
    assert "instance: null" in (runs / "Pusher-apg-s0" / "config.yaml").read_text()
    assert "held-out instances 1000, 1001" in (tmp_path / "gen" / "report.md").read_text()
    with pytest.raises(ConfigError, match="test_seeds"):
        load_study(_write(tmp_path, {**TINY, "protocol": "generalize"}, name="bad.yaml"))


def test_a_finished_run_stays_valid_when_only_the_section_s_training_length_changes(tmp_path):
    """A study trains for its budget, so a section's n_timesteps does not decide whether a finished
    run counts; any other changed hyperparameter stops the study."""
    from diffenvs.baselines.study import job_dict as _job_dict

    values = {**TINY, "seeds": [0], "methods": {"ppo": TINY["methods"]["ppo"]}, "out_dir": str(tmp_path / "out")}
    config = load_study(_write(tmp_path, values))
    [job] = jobs(config)
    recorded = _job_dict(job)
    recorded["resolved"]["n_timesteps"] = 12345.0  # finished before the default training length changed
    (tmp_path / "out" / "runs" / job.name).mkdir(parents=True)
    (tmp_path / "out" / "runs" / job.name / "job.json").write_text(json.dumps(recorded))
    result = run_study(config, progress=False, report=False)
    assert result.skipped == [job.name] and result.ran == []
    recorded["resolved"]["learning_rate"] = 1.0
    (tmp_path / "out" / "runs" / job.name / "job.json").write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match=job.name):
        run_study(config, progress=False, report=False)


def test_a_finished_run_stays_valid_when_an_option_added_later_is_off(tmp_path):
    """A run recorded before the solver gained an option (contact discovery) ran without it: the
    option, off in the new job, does not invalidate it; switched on, it does."""
    from diffenvs.baselines.study import job_dict as _job_dict

    values = {**TINY, "seeds": [0], "methods": {"adam": TINY["methods"]["adam"]}, "out_dir": str(tmp_path / "out")}
    config = load_study(_write(tmp_path, values))
    [job] = jobs(config)
    recorded = _job_dict(job)
    gradient = recorded["resolved"]["solver"]["gradient"]
    assert gradient.pop("contact_discovery") is False and gradient.pop("discovery_stages") is None
    (tmp_path / "out" / "runs" / job.name).mkdir(parents=True)
    (tmp_path / "out" / "runs" / job.name / "job.json").write_text(json.dumps(recorded))
    assert run_study(config, progress=False, report=False).skipped == [job.name]
    switched = {**values, "methods": {"adam": {**TINY["methods"]["adam"], "set": {"solver.gradient.contact_discovery": True}}}}
    with pytest.raises(ConfigError, match=job.name):
        run_study(load_study(_write(tmp_path, switched, name="on.yaml")), progress=False, report=False)


def test_the_generalization_protocol_trains_with_the_random_instances_values(tmp_path):
    """A job of the generalize protocol resolves (and records in job.json) the section's
    random_instances values; a job of the instance protocol the section's own."""
    from diffenvs.baselines.rl import load_hyperparams
    from diffenvs.baselines.study import job_dict as _job_dict

    methods = {"shac": {"kind": "train", "method": "shac", "budget": 2048}}
    one = load_study(_write(tmp_path, {**TINY, "methods": methods}, name="one.yaml"))
    gen = load_study(_write(tmp_path, {**TINY, "methods": methods, "protocol": "generalize", "test_seeds": [1000]},
                            name="gen.yaml"))
    [job_one, *_], [job_gen, *_] = jobs(one), jobs(gen)
    assert _job_dict(job_one)["resolved"] == load_hyperparams("shac", "DiffEnvs/Pusher-v0")
    assert _job_dict(job_gen)["resolved"] == load_hyperparams("shac", "DiffEnvs/Pusher-v0", random_instances=True)
    assert _job_dict(job_gen)["resolved"]["remedies_final"] != _job_dict(job_one)["resolved"]["remedies_final"]


def test_robustness_replays_every_result_under_the_same_noise(tmp_path):
    """`compare --robustness`: noiseless replays reproduce the study, noisy ones use shared draws."""
    import gymnasium as gym

    from diffenvs.baselines.robustness import noise_draws, run_robustness
    from diffenvs.cli import main

    values = {**TINY, "seeds": [0], "workers": 1,
              "methods": {key: TINY["methods"][key] for key in ("adam", "ppo")}, "out_dir": str(tmp_path / "s")}
    config = load_study(_write(tmp_path, values))
    assert not run_study(config, progress=False).failed
    csv_path, md_path = run_robustness(config, noise=(0.0, 0.3), episodes=3, progress=False)
    with open(csv_path, encoding="utf-8") as handle:
        rows = {(r["method"], float(r["noise"])): r for r in csv.DictReader(handle)}
    assert sorted(rows) == [("adam", 0.0), ("adam", 0.3), ("ppo", 0.0), ("ppo", 0.3)]
    for method in ("adam", "ppo"):
        result = json.loads((tmp_path / "s" / "runs" / f"Pusher-{method}-s0" / "summary.json").read_text())
        assert float(rows[(method, 0.0)]["metric_mean"]) == pytest.approx(result["metric"], abs=1e-9)
        assert rows[(method, 0.3)]["episodes"] == "3"

    # the noisy episodes are single-env episodes on the instance with actions + 0.3 * the shared draws
    actions = np.load(tmp_path / "s" / "runs" / "Pusher-adam-s0" / "best.npz")["actions"]
    draws = noise_draws(0, 3, len(actions), actions.shape[1])
    env = gym.make("DiffEnvs/Pusher-v0", differentiable=False)
    metrics = []
    for episode in range(3):
        env.reset(seed=0)
        for t in range(len(actions)):
            *_, info = env.step(actions[t] + 0.3 * draws[t, episode])
        metrics.append(info["loss_reduction"])
    env.close()
    assert float(rows[("adam", 0.3)]["metric_mean"]) == pytest.approx(np.mean(metrics), abs=1e-9)
    assert "## Pusher" in md_path.read_text() and "| adam |" in md_path.read_text()
    before = csv_path.read_text()
    run_robustness(config, noise=(0.0, 0.3), episodes=3, methods=("adam",), seeds=(0,), progress=False)
    assert csv_path.read_text() == before  # adam's rows replaced by the same ones, ppo's kept

    # a run redone since its rows were replayed (new values after a tuning): its old rows go, even when
    # the call replays other methods only; replaying it brings them back
    result_path = tmp_path / "s" / "runs" / "Pusher-ppo-s0" / "summary.json"
    original = result_path.read_text()
    result_path.write_text(json.dumps({**json.loads(original), "metric": json.loads(original)["metric"] + 0.1}))
    run_robustness(config, noise=(0.0, 0.3), episodes=3, methods=("adam",), progress=False)
    with open(csv_path, encoding="utf-8") as handle:
        assert {r["method"] for r in csv.DictReader(handle)} == {"adam"}
    assert "Pusher-ppo-s0" in md_path.read_text().split("lacking rows")[1]
    result_path.write_text(original)
    run_robustness(config, noise=(0.0, 0.3), episodes=3, methods=("ppo",), progress=False)
    assert csv_path.read_text() == before

    # a run without its model (a fresh clone: models are not committed) keeps its earlier rows, and is
    # listed as missing where they lack a level; an artifact that does not match raises
    (tmp_path / "s" / "runs" / "Pusher-ppo-s0" / "best_model.zip").unlink()
    run_robustness(config, noise=(0.0, 0.3), episodes=3, progress=False)
    assert csv_path.read_text() == before and "lacking rows" not in md_path.read_text()
    assert main(["compare", "--config", str(_write(tmp_path, values, "again.yaml")), "--robustness", "--noise", "0",
                 "0.2", "--episodes", "3", "--no-progress"]) == 0
    with open(csv_path, encoding="utf-8") as handle:
        assert sorted((r["method"], float(r["noise"])) for r in csv.DictReader(handle)) == [
            ("adam", 0.0), ("adam", 0.2), ("ppo", 0.0)]
    assert "Pusher-ppo-s0" in md_path.read_text().split("lacking rows")[1]
    shutil.rmtree(tmp_path / "s" / "runs" / "Pusher-ppo-s0")  # a removed run loses its rows
    run_robustness(config, noise=(0.0, 0.2), episodes=3, methods=("ppo",), progress=False)
    with open(csv_path, encoding="utf-8") as handle:
        assert {r["method"] for r in csv.DictReader(handle)} == {"adam"}
    assert main(["compare", "--config", str(_write(tmp_path, values, "again.yaml")), "--noise", "0.1"]) == 2
    assert main(["compare", "--config", str(_write(tmp_path, values, "again.yaml")), "--robustness",
                 "--episodes", "0"]) == 2
    np.savez(tmp_path / "s" / "runs" / "Pusher-adam-s0" / "best.npz", actions=np.zeros_like(actions))
    with pytest.raises(RuntimeError, match="does not match"):
        run_robustness(config, noise=(0.0,), episodes=1, progress=False)
    with pytest.raises(ConfigError, match="sac"):
        run_robustness(config, methods=("sac",), progress=False)
    with pytest.raises(ConfigError, match="Move"):
        run_robustness(config, envs=("DiffEnvs/Move-v0",), progress=False)
    with pytest.raises(ConfigError, match=r"seeds \[3\]"):
        run_robustness(config, seeds=(3,), progress=False)
    with pytest.raises(ConfigError, match="protocol"):
        run_robustness(load_study(_shipped("generalize")), progress=False)


@pytest.mark.slow
def test_max_episode_steps_sets_every_methods_episode_and_the_horizon_script_scales_budgets(tmp_path):
    """``env_kwargs: {max_episode_steps: T}``: the optimizers' sequences and the learners' episodes
    have T steps, robustness replays T steps; benchmarks/horizon.py runs one such study per length
    with budgets scaled by T / the default length and tabulates them."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    from diffenvs.baselines.robustness import run_robustness

    root = Path(__file__).resolve().parents[1]
    values = {**TINY, "seeds": [0], "workers": 1, "env_kwargs": {"DiffEnvs/Pusher-v0": {"max_episode_steps": 20}},
              "methods": {key: TINY["methods"][key] for key in ("adam", "ppo")}, "out_dir": str(tmp_path / "s")}
    config = load_study(_write(tmp_path, values))
    assert not run_study(config, progress=False).failed
    runs = tmp_path / "s" / "runs"
    recorded = (tmp_path / "s" / "study.yaml").read_text()  # what was studied, not where or how many at once
    assert "max_episode_steps: 20" in recorded and "out_dir" not in recorded and "workers" not in recorded
    subset = load_study(_write(tmp_path, {**values, "methods": {"adam": values["methods"]["adam"]}}, name="subset.yaml"))
    write_report(subset)  # a subset's report records the subset, the full config's report restores it
    assert "ppo" not in (tmp_path / "s" / "study.yaml").read_text()
    write_report(config)
    assert (tmp_path / "s" / "study.yaml").read_text() == recorded
    assert np.load(runs / "Pusher-adam-s0" / "best.npz")["actions"].shape == (20, 2)
    assert "horizon: 20" in (runs / "Pusher-adam-s0" / "config.yaml").read_text()
    assert "max_episode_steps: 20" in (runs / "Pusher-ppo-s0" / "config.yaml").read_text()
    csv_path, _ = run_robustness(config, noise=(0.0,), episodes=1, progress=False)  # raises unless it reproduces
    assert csv_path.exists()

    spec = importlib.util.spec_from_file_location("horizon", root / "benchmarks" / "horizon.py")
    horizon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(horizon)
    scaled = horizon.study_for(load_study(_write(tmp_path, TINY, name="base.yaml")), 50, 100, tmp_path / "h")
    assert [m.budget for m in scaled.methods.values()] == [200, 400, 128]
    assert scaled.env_kwargs == {"DiffEnvs/Pusher-v0": {"max_episode_steps": 50}} and scaled.out_dir == str(tmp_path / "h" / "T50")

    base = {**TINY, "seeds": [0], "workers": 1, "methods": {"adam": TINY["methods"]["adam"]}}
    command = [sys.executable, str(root / "benchmarks" / "horizon.py"), "--config", str(_write(tmp_path, base, name="h.yaml")),
               "--lengths", "10", "20", "--out-dir", str(tmp_path / "h"), "--sequences", "2", "--no-progress"]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    with open(tmp_path / "h" / "horizon.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["length"], r["method"], r["env_steps"]) for r in rows] == [("10", "adam", "40.0"), ("20", "adam", "80.0")]
    with open(tmp_path / "h" / "T20" / "gradients.csv", encoding="utf-8") as handle:
        grads = list(csv.DictReader(handle))
    assert len(grads) == 1 and float(grads[0]["grad_norm"]) > 0
    assert "| adam |" in (tmp_path / "h" / "report.md").read_text() and (tmp_path / "h" / "horizon.png").exists()


def test_replicate_reruns_cells_on_unseen_instances_and_tests_the_published_interval(tmp_path, capsys):
    """`compare --replicate SEEDS`: the chosen cells on new instances, each set beside the published one."""
    from diffenvs.baselines.replicate import replicate
    from diffenvs.cli import main

    values = {**TINY, "seeds": [0, 1, 2, 3, 4], "out_dir": str(tmp_path / "s"),
              "methods": {"adam": TINY["methods"]["adam"], "cem": TINY["methods"]["cem"]}}
    path = _write(tmp_path, values)
    config = load_study(path)
    assert not run_study(config, progress=False).failed
    report = (tmp_path / "s" / "report.md").read_text()
    assert "| adam | 400 | 5 |" in report and "] |" in report.split("| adam |")[1].splitlines()[0]  # n = 5: an interval
    cells, md = replicate(config, [7, 8], methods=["adam"], out_dir=tmp_path / "r", progress=False)
    [adam] = cells
    assert adam.method == "adam" and adam.new.n == 2 and adam.published.n == 5 and adam.published.has_interval
    inside = sum(adam.published.low <= v <= adam.published.high for v in adam.new.values)
    assert adam.values_inside == inside and "new IQM" in adam.line() and "| Pusher | adam |" in md.read_text()
    assert sorted(p.name for p in (tmp_path / "r" / "runs").iterdir()) == ["Pusher-adam-s7", "Pusher-adam-s8"]
    # the CLI: resumes the same runs, prints a line per cell; instances the study has are refused
    assert main(["compare", "--config", str(path), "--replicate", "7", "8", "--methods", "adam",
                 "--replicate-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Pusher adam: published" in out and f"{inside} of 2 new values inside" in out
    assert main(["compare", "--config", str(path), "--replicate", "3", "9", "--replicate-dir", str(tmp_path / "x")]) == 2
    assert "[3] are already in the study" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="ppo"):
        replicate(config, [9], methods=["ppo"], out_dir=tmp_path / "x", progress=False)


def test_few_values_are_shown_and_not_bootstrapped_and_training_seeds_nest_in_instances(tmp_path):
    from diffenvs.baselines.report import MIN_FOR_INTERVAL, cell

    few = cell({0: [0.9], 1: [0.5], 2: [0.7]}, reps=200)
    assert not few.has_interval and few.text() == "0.700 (runs: 0.900, 0.500, 0.700)"
    many = cell({i: [v] for i, v in enumerate(np.linspace(0, 1, MIN_FOR_INTERVAL))}, reps=200)
    assert many.has_interval and many.low < many.iqm < many.high
    nested = cell({0: [0.2, 0.4], 1: [1.0, 0.8]}, reps=200)
    assert nested.values == (pytest.approx(0.3), pytest.approx(0.9)) and nested.seed_spread == pytest.approx(0.2)
    values = {**TINY, "seeds": [0], "train_seeds": [5, 6], "out_dir": str(tmp_path / "t"),
              "methods": {"cem": TINY["methods"]["cem"]}}
    config = load_study(_write(tmp_path, values))
    assert [job.name for job in jobs(config)] == ["Pusher-cem-s0-t5", "Pusher-cem-s0-t6"]
    assert [job.request().seed for job in jobs(config)] == [5, 6] and {job.request().instance for job in jobs(config)} == {0}
    assert not run_study(config, progress=False).failed
    report = (tmp_path / "t" / "report.md").read_text()
    assert "seed spread" in report and "training seeds 5, 6" in report
    with pytest.raises(ConfigError, match="train_seeds"):
        load_study(_write(tmp_path, {**values, "protocol": "generalize", "test_seeds": [9]}, name="bad.yaml"))
    with pytest.raises(ConfigError, match="env_seeds"):
        load_study(_write(tmp_path, {**TINY, "env_seeds": {"DiffEnvs/Move-v0": [1]}}, name="bad2.yaml"))


def test_budget_scale_gives_each_env_its_budget_and_names_only_its_envs():
    methods = {"adam": MethodSpec(method="adam", budget=1000), "ppo": MethodSpec(method="ppo", budget=5000)}
    config = StudyConfig(name="s", envs=("DiffEnvs/Assembly-v0", "DiffEnvs/Assembly2-v0"), seeds=(0,), methods=methods,
                         budget_scale={"DiffEnvs/Assembly2-v0": 2})
    budgets = {(job.env_id, job.label): job.spec.budget for job in jobs(config)}
    assert budgets == {("DiffEnvs/Assembly-v0", "adam"): 1000, ("DiffEnvs/Assembly2-v0", "adam"): 2000,
                       ("DiffEnvs/Assembly-v0", "ppo"): 5000, ("DiffEnvs/Assembly2-v0", "ppo"): 10000}
    assert {job.request().budget for job in jobs(config) if job.env_id.endswith("2-v0")} == {2000, 10000}
    with pytest.raises(ValueError, match="budget_scale names envs that are not in envs"):
        StudyConfig(name="s", envs=("DiffEnvs/Assembly-v0",), seeds=(0,), methods=methods, budget_scale={"DiffEnvs/Move-v0": 2})
    with pytest.raises(ValueError, match="budget_scale factors must be > 0"):
        StudyConfig(name="s", envs=("DiffEnvs/Assembly-v0",), seeds=(0,), methods=methods, budget_scale={"DiffEnvs/Assembly-v0": 0})


def test_a_study_prints_a_line_per_run_as_it_starts_and_at_its_evaluations(tmp_path, capfd):
    values = {**TINY, "seeds": [0], "methods": {"adam": TINY["methods"]["adam"]}, "workers": 1}
    config = load_study(_write(tmp_path, values), {"out_dir": str(tmp_path / "study")})
    assert config.out_dir == str(tmp_path / "study")
    run_study(config, progress=True, report=False)
    out = capfd.readouterr().out
    assert "start adam on Pusher instance 0 (400 env steps)" in out
    assert "adam on Pusher instance 0: 400 of 400 env steps, metric" in out  # the last evaluation, always
    assert load_study(_write(tmp_path, values, "mine.yaml")).out_dir == "runs/study/mine"  # never into results/


def test_a_method_restricted_to_some_envs_runs_only_there_and_the_report_says_so(tmp_path, monkeypatch):
    from diffenvs.baselines import report

    envs = ("DiffEnvs/Pusher-v0", "DiffEnvs/Move-v0")
    methods = {"adam": MethodSpec(method="adam", budget=1000), "ppo": MethodSpec(method="ppo", budget=5000, envs=("DiffEnvs/Pusher-v0",))}
    config = StudyConfig(name="s", envs=envs, seeds=(0, 1), methods=methods, out_dir=str(tmp_path / "s"), bootstrap_reps=100)
    assert [job.name for job in jobs(config)] == ["Pusher-adam-s0", "Pusher-adam-s1", "Move-adam-s0", "Move-adam-s1",
                                                  "Pusher-ppo-s0", "Pusher-ppo-s1"]
    assert "envs" not in job_dict(jobs(config)[-1])["spec"]  # job.json as before the key: finished runs stay valid
    with pytest.raises(ValueError, match=r"methods.ppo.envs names envs that are not in envs: \['DiffEnvs/Shape-v0'\]"):
        StudyConfig(name="s", envs=envs, seeds=(0,), methods={"ppo": MethodSpec(method="ppo", budget=5, envs=("DiffEnvs/Shape-v0",))})
    records = [dataclasses.replace(_record(job.label, job.seed, 0.5, [[10, 1, 0.5]]), env_id=job.env_id) for job in jobs(config)]
    monkeypatch.setattr(report, "load_runs", lambda config: records)
    text = write_report(config).read_text()
    assert "6 of 6 runs finished" in text
    move = text.split("## DiffEnvs/Move-v0")[1].split("##")[0]
    assert "Not run on this task (chosen up front: the config's `envs` of each): ppo." in move
    assert "Not run on every task (the config's `envs` of each): ppo." in text and "yet" not in text.split("## Across tasks")[1]
    # read back from YAML as a list
    values = {**TINY, "envs": list(envs), "out_dir": str(tmp_path / "y"),
              "methods": {"ppo": {**TINY["methods"]["ppo"], "envs": ["DiffEnvs/Move-v0"]}}}
    assert [job.env_id for job in jobs(load_study(_write(tmp_path, values)))] == ["DiffEnvs/Move-v0"] * 2


def test_the_report_gives_the_metric_against_the_number_of_stages(tmp_path, monkeypatch):
    from diffenvs.baselines import report
    from diffenvs.baselines.report import stage_families
    from diffenvs.registration import stages_axis

    assert stages_axis("DiffEnvs/Assembly-v0") == ("Assembly", 1) and stages_axis("DiffEnvs/TripleMove3-v0") == ("TripleMove", 3)
    assert stages_axis("DiffEnvs/TripleMove-v0") is None and stages_axis("DiffEnvs/Pusher-v0") is None  # three pairs at once
    assert stages_axis("DiffEnvs/Assembly-v0", {"stages": 2}) == ("Assembly", 2)  # a study's options count
    envs = ("DiffEnvs/TripleMove1-v0", "DiffEnvs/TripleMove2-v0", "DiffEnvs/Assembly-v0", "DiffEnvs/Pusher-v0")
    methods = {"adam": MethodSpec(method="adam", budget=1000),
               "ppo": MethodSpec(kind="train", method="ppo", budget=5000, envs=("DiffEnvs/TripleMove1-v0",))}
    config = StudyConfig(name="s", envs=envs, seeds=(0, 1), methods=methods, out_dir=str(tmp_path / "s"), bootstrap_reps=100,
                         budget_scale={"DiffEnvs/TripleMove2-v0": 2})
    assert stage_families(config) == {"TripleMove": {1: "DiffEnvs/TripleMove1-v0", 2: "DiffEnvs/TripleMove2-v0"}}  # one Assembly
    values = {("DiffEnvs/TripleMove1-v0", "adam"): (0.8, 0.9), ("DiffEnvs/TripleMove2-v0", "adam"): (0.4, 0.5),
              ("DiffEnvs/TripleMove1-v0", "ppo"): (0.2, 0.3)}
    records = [dataclasses.replace(_record(job.label, job.seed, values.get((job.env_id, job.label), (0.1, 0.1))[job.seed],
                                           [[10, 1, 0.5]]), env_id=job.env_id) for job in jobs(config)]
    monkeypatch.setattr(report, "load_runs", lambda config: records)
    text = write_report(config).read_text()
    section = text.split("## By number of stages")[1]
    assert "Assembly" not in section and "| method | 1 stage | 2 stages |" in section
    assert "| adam | 0.850 (runs: 0.800, 0.900), budget 1,000 | 0.450 (runs: 0.400, 0.500), budget 2,000 |" in section
    assert "| ppo | 0.250 (runs: 0.200, 0.300), budget 5,000 | not run |" in section
    assert (tmp_path / "s" / "stages.png").stat().st_size > 1000 and "](stages.png)" in section
    # a family at one number of stages only: no section
    config = dataclasses.replace(config, envs=envs[2:], methods={"adam": methods["adam"]}, budget_scale={})
    assert "By number of stages" not in write_report(config).read_text()


def test_the_stages_section_pools_the_ids_of_several_stages_with_an_interval(tmp_path, monkeypatch):
    """Per family, the ids of two and more stages pooled (stratified bootstrap) for the methods on all of them."""
    from diffenvs.baselines import report

    envs = ("DiffEnvs/TripleMove1-v0", "DiffEnvs/TripleMove2-v0", "DiffEnvs/TripleMove3-v0")
    methods = {"adam": MethodSpec(method="adam", budget=1000),
               "ppo": MethodSpec(kind="train", method="ppo", budget=5000, envs=envs[:2])}
    config = StudyConfig(name="s", envs=envs, seeds=(0, 1, 2), methods=methods, out_dir=str(tmp_path / "s"), bootstrap_reps=200)
    values = {("DiffEnvs/TripleMove1-v0", "adam"): (0.9, 0.9, 0.9), ("DiffEnvs/TripleMove2-v0", "adam"): (0.4, 0.5, 0.6),
              ("DiffEnvs/TripleMove3-v0", "adam"): (0.1, 0.2, 0.3)}
    records = [dataclasses.replace(_record(job.label, job.seed, values.get((job.env_id, job.label), (0.7, 0.7, 0.7))[job.seed],
                                           [[10, 1, 0.5]]), env_id=job.env_id) for job in jobs(config)]
    monkeypatch.setattr(report, "load_runs", lambda config: records)
    section = write_report(config).read_text().split("## By number of stages")[1].split("\n\n![")[0]
    assert "| method | 1 stage | 2 stages | 3 stages | 2-3 stages pooled |" in section
    adam = next(line for line in section.splitlines() if line.startswith("| adam |"))
    middle, low, high = (float(x) for x in re.search(r"\| (\S+) \[(\S+), (\S+)\], n = 6 \|$", adam).groups())
    assert middle == pytest.approx(0.35) and 0.1 < low < middle < high < 0.6  # IQM of 0.1 ... 0.6; never the 0.9 of one stage
    assert next(line for line in section.splitlines() if line.startswith("| ppo |")).endswith("| not run |  |")
    # a missing instance is flagged, as in the overview
    monkeypatch.setattr(report, "load_runs", lambda config: [r for r in records if not (r.env_id.endswith("3-v0") and r.seed == 2)])
    section = write_report(config).read_text().split("## By number of stages")[1]
    assert re.search(r"\| adam \|.*\], n = 5 of 6 \|$", section, re.MULTILINE)
    # one id of several stages: nothing to pool
    config = dataclasses.replace(config, envs=envs[:2], methods={"adam": methods["adam"]})
    assert "stages pooled" not in write_report(config).read_text()
