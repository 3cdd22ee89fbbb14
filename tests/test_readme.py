"""The README's code example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102  (our own README)
    assert "task loss" in capsys.readouterr().out


def test_readme_states_the_ci_test_command():
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    command = "python -m pytest -q tests"
    assert command in README.read_text(encoding="utf-8") and command in ci
