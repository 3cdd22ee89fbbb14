"""YAML configurations of the runners (installed as ``diffenvs.configs``)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
