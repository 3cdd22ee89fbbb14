"""3-D MLS-MPM elastoplastic dough (Neo-Hookean elasticity, von Mises plasticity) with rigid SDF tools."""

from diffenvs.sim.mpm.model import MPMMaterial, MPMModel, ToolShape
from diffenvs.sim.mpm.solver import ActiveRegion, SolverMPM
from diffenvs.sim.mpm.state import MPMControl, MPMGrid, MPMState

__all__ = ["ActiveRegion", "MPMControl", "MPMGrid", "MPMMaterial", "MPMModel", "MPMState", "SolverMPM", "ToolShape"]
