"""The ``diffenvs`` command line."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from PIL import Image

from diffenvs.cli import main


def test_list_prints_every_env(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "DiffEnvs/Pusher-v0" in out and "pusher" in out.lower()


@pytest.mark.slow
def test_demo_writes_a_gif_and_lowers_the_loss(tmp_path, capsys):
    gif = tmp_path / "demo.gif"
    assert main(["demo", "--iters", "12", "--output", str(gif), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "% lower" in out and str(gif) in out
    with Image.open(gif) as image:
        assert image.n_frames == 51
        assert image.size == (512, 256)


def test_demo_rejects_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  iters: 2\n  gradient:\n    learning_rate: 3\n")
    assert main(["demo", "--config", str(bad)]) == 2
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("diffenvs") is None, reason="console script not installed")
def test_console_script_is_installed():
    result = subprocess.run(["diffenvs", "list"], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "DiffEnvs/Pusher-v0" in result.stdout


@pytest.mark.slow
def test_bench_quick_runs_and_writes_json(tmp_path):
    """`diffenvs bench --quick` from the installed package: every figure present and positive. The
    start-up rows' child runs here once with the warm cache: their cold row compiles every kernel
    module from an empty cache (minutes), a figure for the benchmark, not for the tests."""
    import json
    import sys

    from diffenvs.bench import _child

    figures, wall = _child("startup", "DiffEnvs/Pusher-v0", "1", "cpu")
    assert figures == {} and wall > 0
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "diffenvs.cli", "bench", "--quick", "--no-startup", "--json", str(out)],
                            check=False, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "startup" not in report
    from diffenvs.bench import QUICK_TASKS

    assert {row["task"] for row in report["dough"]} == set(QUICK_TASKS)
    for row in report["dough"]:
        assert row["forward_steps_per_s"] > 0 and row["grad_over_forward"] > 1 and row["peak_rss_checkpoint_gib"] > 0
        assert row["grad_over_forward_no_checkpoint"] > 1 and row["peak_rss_no_checkpoint_gib"] > 0
    assert [row["worlds"] for row in report["pusher"]["rows"]] == [1, 16] and report["pusher"]["sync"] > 0
    assert "native / sync" in result.stdout


@pytest.mark.slow
def test_bench_batched_rows_and_task_selection(tmp_path):
    """`--tasks`, `--batched` and `--no-startup`: one task's table, the batched dough rows, no start-up."""
    import json
    import sys

    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "diffenvs.cli", "bench", "--quick", "--tasks", "Move", "--batched", "default:2",
               "--no-startup", "--worlds", "1", "--json", str(out)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "startup" not in report and [row["task"] for row in report["dough"]] == ["Move"]
    (row,) = report["dough_batched"]
    assert row["worlds"] == 2 and row["world_steps_per_s"] > 0 and row["reset_s"] > 0 and row["gib_per_world"] > 0


def test_task_rates_interleaves_tasks_and_writes_ratios(tmp_path):
    """benchmarks/task_rates.py: every task's rate in each preset and mode, printed as a ratio to the first."""
    import json
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "task_rates.py"
    out = tmp_path / "rates.json"
    command = [sys.executable, str(script), "--tasks", "RollingPin,Move", "--presets", "default", "--rounds", "1",
               "--steps", "2", "--by-kernel", "--json", str(out)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert sorted(figures["rates"]) == ["default/forward", "default/grad"]
    assert all(set(rates) == {"RollingPin", "Move"} for rates in figures["rates"].values())
    for rates in figures["rates"].values():
        assert min(row["steps_per_s"] for row in rates.values()) > 0 and rates["RollingPin"]["ratio"] == 1.0
        low, high = rates["Move"]["ratio_range"]
        assert rates["Move"]["particles"] > 0 and low <= rates["Move"]["ratio"] <= high
        assert rates["Move"]["ms_per_step"]["p2g_scatter_series"] > 0 and "python" in rates["Move"]["ms_per_step"]  # the default mapping's
    assert "| p2g_scatter_series |" in result.stdout
    assert "| RollingPin |" in result.stdout and "| 1.00 (1.00-1.00) |" in result.stdout and "--rounds 1" in figures["command"]



def test_plastic_cost_splits_each_substep_particles_by_their_return_mapping(tmp_path):
    """benchmarks/plastic_cost.py: per task, the trial-only and projected timings, how the particles of a
    substep split (settled by the bound, yielding, not settled but elastic: the three add up to the particles)
    and the projection's adjoint per yielding particle."""
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "plastic_cost.py"
    command = [sys.executable, str(script), "--tasks", "RollingPin,Move", "--steps", "2", "--rounds", "1"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines()
            if line.startswith(("| RollingPin", "| Move"))}
    assert sorted(rows) == ["Move", "RollingPin"]
    for cells in rows.values():
        *numbers, adjoint = (c.strip() for c in cells)
        particles, trial, projected, path, settled, yielding, unsettled_elastic = (float(c.replace(",", "")) for c in numbers)
        assert trial > 0 and projected > 0 and abs(projected - trial - path) < 2e-3
        assert settled + yielding + unsettled_elastic == pytest.approx(particles, abs=1.5) and settled > 0.5 * particles
        # The projection's adjoint is timed over the yielding particles: "-" only where none yielded.
        assert float(adjoint) > 0 if yielding > 0 else adjoint == "-" or float(adjoint) > 0


def test_profile_grad_times_the_kernels_of_the_env_options_it_is_given(tmp_path):
    """benchmarks/profile_grad.py --set: the env options reach the env (the svd return mapping's
    kernels are the ones timed, not the default series'), and a wrong option stops it with the env's error."""
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_grad.py"
    command = [sys.executable, str(script), "--env", "DiffEnvs/RollingPin-v0", "--preset", "default", "--steps", "2",
               "--top", "40", "--set", "return_mapping=svd"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "p2g_scatter " in result.stdout and "p2g_scatter_series" not in result.stdout
    bad = subprocess.run([*command[:-1], "return_mapping=qr"], check=False, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert bad.returncode != 0 and "return_mapping" in bad.stderr


def test_first_hour_passes_its_env_options_and_rejects_malformed_ones(tmp_path):
    """benchmarks/first_hour.py --set: without the Pusher's proximity term the gradient is exactly zero,
    so Adam ends where it began; with the default it lowers the loss. A pair without '=' stops it."""
    import json
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "first_hour.py"
    command = [sys.executable, str(script), "--envs", "DiffEnvs/Pusher-v0", "--seeds", "0", "--iters", "3",
               "--samples", "2", "--horizon", "20"]
    rows = {}
    for name, extra in (("default", []), ("no_proximity", ["--set", "proximity_weight=0.0"])):
        result = subprocess.run([*command, "--out", str(tmp_path / name), *extra], check=False, capture_output=True,
                                text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        (rows[name],) = json.loads((tmp_path / name / "first_hour.json").read_text())
    assert rows["default"]["adam_loss"] < rows["default"]["initial_loss"]
    assert rows["no_proximity"]["adam_loss"] == rows["no_proximity"]["initial_loss"]
    bad = subprocess.run([*command, "--set", "proximity_weight"], check=False, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert bad.returncode == 2 and "--set expects KEY=VALUE" in bad.stderr


def test_releases_compares_a_first_release_with_the_instances_added_since(tmp_path):
    """benchmarks/releases.py: per cell the first release's interval, the new values inside it, and
    whether their IQM is: a cell whose new instances all land far off does not hold."""
    import sys
    from pathlib import Path

    def study(name, rows):
        folder = tmp_path / name
        folder.mkdir()
        lines = ["env_id,method,seed,metric,env_steps,wall_time"]
        lines += [f"DiffEnvs/Pusher-v0,{method},{seed},{value},100,1.0" for method, seed, value in rows]
        (folder / "final.csv").write_text("\n".join(lines) + "\n")
        return folder

    first = [(m, s, v) for m, values in (("held", (0.80, 0.85, 0.90)), ("broke", (0.90, 0.91, 0.92)))
             for s, v in enumerate(values)]
    now = first + [("held", 3, 0.86), ("held", 4, 0.84), ("broke", 3, 0.40), ("broke", 4, 0.50)]
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "releases.py"
    out = tmp_path / "releases.md"
    result = subprocess.run([sys.executable, str(script), str(study("v1", first)), str(study("v2", now)), "--out", str(out)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_text() == result.stdout
    assert "**1 of 2 cells' new IQM inside the first interval; 2 of 4 new values inside.**" in result.stdout
    held = next(line for line in result.stdout.splitlines() if "| held |" in line)
    broke = next(line for line in result.stdout.splitlines() if "| broke |" in line)
    assert "| 0.860, 0.840 | yes (0.850) | 2 of 2 | 0.850 [" in held and "(5) |" in held
    assert "| 0.400, 0.500 | **no** (0.450) | 0 of 2 |" in broke
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "none"), str(tmp_path / "v2")], check=False,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "final.csv not found" in missing.stderr


@pytest.mark.parametrize("bad", [["--batched", "huge:4"], ["--batched", "paper:0"], ["--batched", "paper"], ["--tasks", "Knead"]])
def test_bench_rejects_bad_options(bad):
    import sys

    result = subprocess.run([sys.executable, "-m", "diffenvs.cli", "bench", *bad], check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and ("--batched" in result.stderr or "--tasks" in result.stderr)


def test_warp_is_quiet_by_default_and_verbose_on_request():
    """An env's first use prints nothing of Warp's (no banner, no module-load lines, no "no CUDA
    driver" warning on a CPU machine); DIFFENVS_WARP_VERBOSE brings them back."""
    import os
    import sys

    code = ("import gymnasium as gym, numpy as np, diffenvs\n"
            "env = gym.make('DiffEnvs/Pusher-v0')\nenv.reset(seed=0)\nenv.step(np.zeros(2))\nprint('stepped')")
    env = {key: value for key, value in os.environ.items() if key != "DIFFENVS_WARP_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=True)
    assert quiet.stdout.strip() == "stepped" and "Warp" not in quiet.stderr, quiet.stderr[-1000:]
    verbose = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                             env={**env, "DIFFENVS_WARP_VERBOSE": "1"})
    assert "Warp" in verbose.stdout + verbose.stderr
