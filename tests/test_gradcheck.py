"""``grad()`` against finite differences on every registered id, and the ``diffenvs gradcheck`` tool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffenvs.baselines.gradcheck import GradcheckConfig, _verdict, gradcheck
from diffenvs.cli import main
from tests.conftest import ENV_IDS, SMALL


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_id_gradient_matches_finite_differences_on_defaults(env_id):
    """The registry's tiny instance of each id, its default options: a non-zero gradient whose own
    direction agrees with central differences, and no direction that disagrees."""
    report = gradcheck(GradcheckConfig(env_id=env_id, env_kwargs=SMALL[env_id], steps=4, directions=3))
    assert report.gradient_norm > 0.0, report.format()
    assert report.directions[0].verdict == "agree", report.format()
    assert report.passed, report.format()


def test_zero_gradient_is_reported_with_its_remedies():
    report = gradcheck(GradcheckConfig(env_id="DiffEnvs/Pusher-v0", env_kwargs={"proximity_weight": 0.0}))
    assert report.zero_gradient and all(d.verdict == "zero" for d in report.directions)
    assert "exactly zero" in report.warnings[0] and "--set proximity_weight=" in report.warnings[0]


def test_verdicts():
    eps_values = np.array([1.0, 1.0, 1.0])
    assert _verdict(1.0, eps_values * 1.001, 1e-2, 0.5).verdict == "agree"
    assert _verdict(2.0, eps_values, 1e-2, 0.5).verdict == "disagree"
    noisy = np.array([0.5, 1.0, 3.0])  # differences spread across step sizes, the analytic value inside
    assert _verdict(2.0, noisy, 1e-2, 0.5).verdict == "inconclusive"
    assert _verdict(5.0, noisy, 1e-2, 0.5).verdict == "disagree"
    assert _verdict(0.0, np.zeros(3), 1e-2, 0.5).verdict == "zero"
    # a tiny derivative (a direction nearly orthogonal to the gradient) is judged against the floor
    small = np.array([0.00076, 0.00067, 0.00080])
    assert _verdict(0.00089, small, 5e-2, 0.5).verdict == "disagree"
    assert _verdict(0.00089, small, 5e-2, 0.5, floor=0.1 * 0.022).verdict == "agree"
    assert _verdict(0.0019, small, 5e-2, 0.5, floor=0.1 * 0.022).verdict == "disagree"  # off by half the floor


def test_gradcheck_cli(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["gradcheck", "--env", "DiffEnvs/Pusher-v0", "--steps", "3", "--json", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert json.loads(out.read_text())["env_id"] == "DiffEnvs/Pusher-v0"
    assert main(["gradcheck", "--env", "DiffEnvs/Pusher-v0", "--set", "proximity_weight=0"]) == 0
    assert "exactly zero" in capsys.readouterr().out
    assert main(["gradcheck", "--env", "DiffEnvs/Nope-v0"]) == 2
    assert main(["gradcheck", "--env", "DiffEnvs/Pusher-v0", "--set", "box_colour=red"]) == 2
    assert "box_colour" in capsys.readouterr().err
