"""Every Python package of the repository is installed by pyproject.toml under its diffenvs name."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapping = config["package-dir"]
    listed = set(config["packages"])
    found = set()
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert not any(name.split(".")[0] in {"tasks", "baselines", "configs"} for name in listed)


def test_the_wheel_ships_the_configs_the_type_marker_and_the_licence(tmp_path):
    """``pip wheel`` of the checkout: every config file, ``py.typed`` and the licence are inside,
    the version is ``diffenvs.__version__`` (its one source), and setuptools warns of nothing."""
    import subprocess
    import sys
    import zipfile

    import diffenvs

    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True, check=True)
    warnings = [line for line in (build.stdout + build.stderr).splitlines()
                if "warn" in line.lower() and "byte-compiling is disabled" not in line]  # the latter: PYTHONDONTWRITEBYTECODE
    assert not warnings, warnings
    [wheel] = tmp_path.glob("diffenvs-*.whl")
    assert wheel.name.startswith(f"diffenvs-{diffenvs.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"diffenvs/configs/{path.relative_to(ROOT / 'configs').as_posix()}" for path in (ROOT / "configs").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert "diffenvs/py.typed" in names and any(name.endswith("licenses/LICENSE") for name in names)


def test_version_flag(capsys):
    import pytest

    import diffenvs
    from diffenvs.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"diffenvs {diffenvs.__version__}"
