"""Run directories (``diffenvs optimize``), config resolution, and the loss-landscape tool."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from diffenvs.baselines import runner
from diffenvs.baselines.landscape import loss_landscape
from diffenvs.baselines.problem import Problem, ProblemConfig
from diffenvs.baselines.runner import RunConfig, resolve_config, run_optimize
from diffenvs.cli import main
from diffenvs.config import ConfigError, from_dict, read_yaml
from diffenvs.configs import CONFIG_DIR

DEFAULTS = CONFIG_DIR / "optimize.yaml"


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_per_env_defaults_and_overrides():
    pusher = resolve_config(DEFAULTS)
    assert pusher.problem.env_id == "DiffEnvs/Pusher-v0" and pusher.solver.gradient.contact_weight == 0.1
    dough = resolve_config(DEFAULTS, {"problem.env_id": "DiffEnvs/Shape-v0", "solver.gradient.lr": 0.3})
    assert dough.solver.gradient.softness == 0.01 and dough.solver.gradient.softness_final == 0.0
    assert dough.solver.gradient.contact_focus is True
    rolling = resolve_config(DEFAULTS, {"problem.env_id": "DiffEnvs/RollingPin-v0"})
    assert rolling.solver.gradient.softness == 0.02 and rolling.solver.gradient.lr == 0.2
    assert dough.solver.gradient.lr == 0.3 and dough.solver.iters == 30
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_config(DEFAULTS, {"solver.gradient.learning_rate": 0.1})
    with pytest.raises(ConfigError, match="lr"):
        resolve_config(DEFAULTS, {"solver.gradient.lr": -1.0})


def test_yaml_reads_exponent_floats(tmp_path):
    """``1e-3`` is a number in config files and on the command line (PyYAML's YAML 1.1 reads a string)."""
    from diffenvs.cli import parse_sets

    path = tmp_path / "values.yaml"
    path.write_text("lr: 5e-4\nsteps: 1e5\nname: e5\nlist: [1E-2, 3]\n", encoding="utf-8")
    assert read_yaml(path) == {"lr": 5e-4, "steps": 1e5, "name": "e5", "list": [1e-2, 3]}
    assert parse_sets(["solver.gradient.lr=3e-1", "problem.env_id=DiffEnvs/Shape-v0"]) == {
        "solver.gradient.lr": 0.3, "problem.env_id": "DiffEnvs/Shape-v0"}
    assert resolve_config(DEFAULTS, parse_sets(["solver.gradient.lr=3e-1"])).solver.gradient.lr == 0.3


def test_a_run_writes_every_file(tmp_path):
    config = resolve_config(DEFAULTS, {"problem.seed": 2, "problem.horizon": 30, "solver.iters": 6, "out_dir": str(tmp_path),
                                       "run_name": "r"})
    run = run_optimize(config, progress=False)
    assert run.status == "finished" and run.run_dir == tmp_path / "r"
    rows = read_rows(run.run_dir / "log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(6))
    assert float(rows[-1]["best_loss"]) == pytest.approx(run.result.loss)
    curve = read_rows(run.run_dir / "curve.csv")  # the run directory's common columns, one row per iteration
    assert list(curve[0]) == ["env_steps", "wall_time", "metric", "best_metric"] and len(curve) == 6
    assert [float(r["best_metric"]) for r in curve] == [float(r["best_metric"]) for r in rows]
    with np.load(run.run_dir / "best.npz") as best:
        np.testing.assert_array_equal(best["actions"], run.result.actions)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["budget"]["env_steps"] == 6 * 2 * 30
    assert summary["metric"] == pytest.approx(run.result.metric) and summary["env_steps"] == 6 * 2 * 30
    assert summary["artifact"] == "best.npz" and summary["method"] == "adam" and summary["kind"] == "optimizer"
    resolved = read_yaml(run.run_dir / "config.yaml")["resolved"]  # the resolved config round-trips
    assert from_dict(RunConfig, {**resolved, "out_dir": str(tmp_path), "run_name": "r"}) == config
    with Image.open(run.run_dir / "best.gif") as gif:
        assert gif.n_frames == 31
    assert (run.run_dir / "curve.png").stat().st_size > 0


def test_an_interrupted_run_leaves_valid_files(tmp_path, monkeypatch):
    real = runner.optimize

    def interrupted(problem, config, *, callback):
        def stop_after_three(record, best):
            callback(record, best)
            if record["iteration"] == 2:
                raise KeyboardInterrupt
        return real(problem, config, callback=stop_after_three)

    monkeypatch.setattr(runner, "optimize", interrupted)
    config = resolve_config(DEFAULTS, {"problem.seed": 2, "problem.horizon": 30, "solver.iters": 50,
                                       "out_dir": str(tmp_path), "run_name": "cut"})
    run = run_optimize(config, progress=False)
    assert run.status == "interrupted" and run.result is None
    rows = read_rows(run.run_dir / "log.csv")
    assert len(rows) == 3
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["evaluations"] == 3
    assert summary["best_loss"] == pytest.approx(float(rows[-1]["best_loss"]))
    with np.load(run.run_dir / "best.npz") as best:
        assert best["actions"].shape == (30, 2) and float(best["loss"]) == pytest.approx(summary["best_loss"])
    assert (run.run_dir / "best.gif").exists() and (run.run_dir / "curve.png").exists()


def test_cli_optimize_and_bad_input(tmp_path, capsys):
    args = ["optimize", "--method", "cem", "--iters", "2", "--seed", "1", "--horizon", "20", "--out-dir", str(tmp_path),
            "--run-name", "cli", "--no-gif", "--no-plot", "--no-progress", "--hp", "solver.cem.population=8",
            "--set", "proximity_weight=0.5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cem on DiffEnvs/Pusher-v0" in out and "loss_reduction" in out
    assert (tmp_path / "cli" / "summary.json").exists() and not (tmp_path / "cli" / "best.gif").exists()
    resolved = read_yaml(tmp_path / "cli" / "config.yaml")["resolved"]
    assert resolved["solver"]["cem"]["population"] == 8 and resolved["problem"]["env_kwargs"] == {"proximity_weight": 0.5}
    # --hp: config keys, --set: env options; errors name the flag and the key
    assert main(["optimize", "--hp", "solver.gradient.lr=-1", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--hp solver.gradient.lr=-1" in err and "lr must be > 0" in err
    assert main(["optimize", "--hp", "solver.gradient.lrr=1", "--out-dir", str(tmp_path)]) == 2
    assert "--hp solver.gradient.lrr=1" in capsys.readouterr().err
    assert main(["optimize", "--hp", "solver.iters", "--out-dir", str(tmp_path)]) == 2
    assert "--hp expects KEY=VALUE" in capsys.readouterr().err
    assert main(["optimize", "--set", "proximity_wieght=1", "--out-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--set" in err and "proximity_wieght" in err and "optimize.yaml" not in err
    with pytest.raises(SystemExit):
        main(["optimize", "--method", "sgd"])


def test_landscape_matches_direct_evaluation(tmp_path, capsys):
    problem = Problem(ProblemConfig(env_id="DiffEnvs/Pusher-v0", seed=2, horizon=30, eval_batch=8))
    centre = np.random.default_rng(1).uniform(-0.5, 0.5, size=problem.action_shape)
    scape = loss_landscape(problem, centre, points=5, span=0.5, horizons=[10, 30])
    assert scape.losses.shape == (2, 5) and scape.horizons == [10, 30]
    assert scape.losses[1, 2] == pytest.approx(problem.evaluate(centre[None]).loss[0])
    assert all(r >= 1.0 - 1e-9 for r in scape.roughness)
    plane = loss_landscape(problem, centre, dims=2, points=3, span=0.5, horizons=[30])
    assert plane.losses.shape == (1, 3, 3) and plane.losses[0, 1, 1] == pytest.approx(scape.losses[1, 2])
    with pytest.raises(ValueError, match="horizons"):
        loss_landscape(problem, centre, horizons=[31])
    problem.close()
    out = tmp_path / "l.png"
    assert main(["landscape", "--horizon", "20", "--points", "5", "--out", str(out)]) == 0
    assert out.exists() and out.with_suffix(".npz").exists() and "roughness" in capsys.readouterr().out
