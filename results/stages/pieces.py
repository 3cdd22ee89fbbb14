"""How far each piece moved in a run's result (the stages study's TripleMove runs).

Replays what the run produced, loaded through its method (an optimizer's best sequence, a learner's
best evaluated policy, deterministic), on its instance in its reported setting (from ``job.json``),
and prints every piece's centroid displacement: a piece that never moved was never touched.
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
from diffenvs.baselines.method import get_method
from diffenvs.warp_util import quiet_warp


def main(runs: list[str]) -> None:
    quiet_warp()
    for run in map(Path, runs):
        job = json.loads((run / "job.json").read_text())
        policy = get_method(job["spec"]["method"]).load(run)
        if policy is None:
            print(f"{run.name}: no model or sequence in the run directory (they are not committed)")
            continue
        env = gym.make(job["env_id"], differentiable=False, **job["env_kwargs"])
        obs, info = env.reset(seed=job["seed"])
        start = np.asarray(env.unwrapped.get_state()["particle_x"]).reshape(-1, 3)
        policy.reset()
        terminated = truncated = False
        while not (terminated or truncated):  # the episode as the study judged it: to its time limit
            obs, _, terminated, truncated, info = env.step(policy(obs[None])[0])
        end = np.asarray(env.unwrapped.get_state()["particle_x"]).reshape(-1, 3)
        task = env.unwrapped.task
        pieces = np.array_split(np.arange(len(start)), task.stages)
        moved = ", ".join("({:+.3f}, {:+.3f}, {:+.3f})".format(*(end[p].mean(0) - start[p].mean(0))) for p in pieces)
        print(f"{run.name}: metric {info.get(task.metric, float('nan')):.3f}; pieces' centroids moved by {moved}")
        env.close()


if __name__ == "__main__":
    main(sys.argv[1:])
