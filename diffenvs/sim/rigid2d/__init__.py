"""Planar rigid-body simulation: a kinematic round pusher and a free rounded box on a table."""

from diffenvs.sim.rigid2d.model import Rigid2DModel
from diffenvs.sim.rigid2d.solver import SolverRigid2D
from diffenvs.sim.rigid2d.state import Rigid2DControl, Rigid2DState

__all__ = ["Rigid2DControl", "Rigid2DModel", "Rigid2DState", "SolverRigid2D"]
