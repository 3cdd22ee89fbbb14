"""Dough tasks: elastoplastic plasticine (MLS-MPM) shaped by rigid tools, with analytic gradients.

Modules, one concern each:

* :mod:`~diffenvs.tasks.dough.config`: presets and options (:class:`DoughConfig`);
* :mod:`~diffenvs.tasks.dough.kernels`: the objective's kernels (loss, contact loss, reward, IoU,
  observation, divergence);
* :mod:`~diffenvs.tasks.dough.targets`: the starting blob and the scripted demonstrations that
  make targets;
* :mod:`~diffenvs.tasks.dough.task`: :class:`DoughTask`, what every dough task shares;
* :mod:`~diffenvs.tasks.dough.variants`: ``RollingPin``, ``Move``, ``Shape``, ``Pinch``, ``Writer``, ``TripleMove`` and ``Torus``;
* :mod:`~diffenvs.tasks.dough.compound`: ``Rope``, ``Table``, ``Assembly`` and ``Chopsticks`` (an obstacle,
  pieces of several shapes, stages, coupled tools);
* :mod:`~diffenvs.tasks.dough.render`: drawing;
* :mod:`~diffenvs.tasks.dough.envs`: the Gymnasium envs and their documentation.
"""

from diffenvs.tasks.dough.compound import AssemblyTask, ChopsticksTask, RopeTask, TableTask
from diffenvs.tasks.dough.config import BLOB_HALF, PRESETS, DoughConfig
from diffenvs.tasks.dough.envs import (
    AssemblyEnv,
    AssemblyVectorEnv,
    ChopsticksEnv,
    ChopsticksVectorEnv,
    MoveEnv,
    MoveVectorEnv,
    PinchEnv,
    PinchVectorEnv,
    RollingPinEnv,
    RollingPinVectorEnv,
    RopeEnv,
    RopeVectorEnv,
    ShapeEnv,
    ShapeVectorEnv,
    TableEnv,
    TableVectorEnv,
    TorusEnv,
    TorusVectorEnv,
    TripleMoveEnv,
    TripleMoveVectorEnv,
    WriterEnv,
    WriterVectorEnv,
)
from diffenvs.tasks.dough.task import DoughStepBuffers, DoughTask, LossScratch
from diffenvs.tasks.dough.variants import (
    MoveTask,
    PinchTask,
    RollingPinTask,
    ShapeTask,
    TorusTask,
    TripleMoveTask,
    WriterTask,
)

__all__ = [
    "BLOB_HALF",
    "PRESETS",
    "AssemblyEnv",
    "AssemblyTask",
    "AssemblyVectorEnv",
    "ChopsticksEnv",
    "ChopsticksTask",
    "ChopsticksVectorEnv",
    "DoughConfig",
    "DoughStepBuffers",
    "DoughTask",
    "LossScratch",
    "MoveEnv",
    "MoveTask",
    "MoveVectorEnv",
    "PinchEnv",
    "PinchTask",
    "PinchVectorEnv",
    "RollingPinEnv",
    "RollingPinTask",
    "RollingPinVectorEnv",
    "RopeEnv",
    "RopeTask",
    "RopeVectorEnv",
    "ShapeEnv",
    "ShapeTask",
    "ShapeVectorEnv",
    "TableEnv",
    "TableTask",
    "TableVectorEnv",
    "TorusEnv",
    "TorusTask",
    "TorusVectorEnv",
    "TripleMoveEnv",
    "TripleMoveTask",
    "TripleMoveVectorEnv",
    "WriterEnv",
    "WriterTask",
    "WriterVectorEnv",
]
