"""Simulation families of diffenvs: each subpackage owns one solver (model, state, kernels, solver)."""
