"""Render the picture of every env's page, seed 0, default options: its start (top) and its target
(bottom; the Pusher: the end of an episode of Adam's best sequence, the target drawn as an outline).

Run from the repository root after changing a task's scene or targets (about a minute on a CPU):

    python docs/render_envs.py

The pictures are committed (``docs/assets/envs/<Task>.png``) so that the site builds without simulating.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np

import diffenvs
from diffenvs.registration import task_name

OUT = Path(__file__).parent / "assets" / "envs"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for info in diffenvs.ENVS:
        if info.variant_of is not None:
            continue
        env = gym.make(info.id, render_mode="rgb_array", render_width=480, render_height=240).unwrapped
        env.reset(seed=0)
        start = env.render()
        if "target_x" in env.get_state():  # dough: the target particle set in the dough's place
            state = env.get_state()
            env.set_state({**state, "particle_x": state["target_x"]})
            frames = [start, env.render()]
        else:  # the Pusher: the start, and the end of an episode of 30 Adam iterations' best sequence
            from diffenvs.baselines.problem import Problem, ProblemConfig
            from diffenvs.baselines.solver_config import SolverConfig
            from diffenvs.baselines.trajopt import optimize

            problem = Problem(ProblemConfig(env_id=info.id, seed=0))
            result = optimize(problem, SolverConfig(method="adam", iters=30))
            for action in result.actions:
                env.step(action)
            frames = [start, env.render()]
        iio.imwrite(OUT / f"{task_name(info.id)}.png", np.concatenate(frames, axis=0))
        print("wrote", OUT / f"{task_name(info.id)}.png")


if __name__ == "__main__":
    main()
