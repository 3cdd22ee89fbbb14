"""How far each piece moved in an optimizer run's best sequence (the stages study's TripleMove runs).

Replays the run's ``best.npz`` on its instance, in its reported setting (from ``job.json``), and prints
every piece's centroid displacement: a piece that never moved was never touched.
The particles are laid out piece after piece, in equal shares::

    python results/stages/pieces.py results/stages/runs/TripleMove2-adam-s0 results/stages/runs/TripleMove2-adam_cd-s0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

import diffenvs  # noqa: F401  (registers the ids)
from diffenvs.warp_util import quiet_warp


def main(runs: list[str]) -> None:
    quiet_warp()
    for run in map(Path, runs):
        job = json.loads((run / "job.json").read_text())
        actions = np.load(run / "best.npz")
        actions = actions[actions.files[0]]
        env = gym.make(job["env_id"], differentiable=False, **job["env_kwargs"]).unwrapped
        env.reset(seed=job["seed"])
        start = np.asarray(env.get_state()["particle_x"]).reshape(-1, 3)
        info: dict = {}
        for action in actions:
            *_, info = env.step(action)
        end = np.asarray(env.get_state()["particle_x"]).reshape(-1, 3)
        pieces = np.array_split(np.arange(len(start)), env.task.stages)
        moved = ", ".join("({:+.3f}, {:+.3f}, {:+.3f})".format(*(end[p].mean(0) - start[p].mean(0))) for p in pieces)
        print(f"{run.name}: metric {info.get(env.task.metric, float('nan')):.3f}; pieces' centroids moved by {moved}")
        env.close()


if __name__ == "__main__":
    main(sys.argv[1:])
