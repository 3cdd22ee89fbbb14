"""Baselines of diffenvs (installed as ``diffenvs.baselines``): gradient optimizers and RL runners."""
