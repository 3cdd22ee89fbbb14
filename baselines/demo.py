"""The demo behind ``diffenvs demo``: optimize a Pusher episode with gradients and show it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffenvs.baselines.problem import Problem, ProblemConfig
from diffenvs.baselines.trajopt import SolverConfig, TrajOptResult, optimize


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Options of the demo (``configs/demo.yaml``).

    Attributes:
        problem: Env id, seed of the initial state, horizon, env kwargs.
        solver: The gradient method and its remedies.
        output: Path of the GIF (before | after); empty for none.
    """

    problem: ProblemConfig = dataclasses.field(default_factory=lambda: ProblemConfig(horizon=50))
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    output: str = "diffenvs_demo.gif"


def run_demo(config: DemoConfig, *, progress: bool = True) -> TrajOptResult:
    """Optimize one episode, print the loss falling, write the GIF; return the result."""
    problem = Problem(config.problem)
    bar = tqdm(total=config.solver.iters, desc=f"{config.solver.method} on {config.problem.env_id}",
               disable=not progress, unit="it")

    def show(record: dict, best_actions: np.ndarray) -> None:
        bar.set_postfix(loss=f"{record['best_loss']:.4f}")
        bar.update()

    result = optimize(problem, config.solver, callback=show)
    bar.close()
    reduction = 1.0 - result.loss / result.initial_loss
    print(f"task loss {result.initial_loss:.4f} -> {result.loss:.4f} ({100 * reduction:.1f}% lower) "
          f"in {len(result.history)} gradient iterations")
    if config.output:
        env = problem.single_env(render_mode="rgb_array")
        before = _frames(env, problem.initial_state, np.zeros_like(result.actions))
        after = _frames(env, problem.initial_state, result.actions)
        write_gif(config.output, [np.concatenate([b, a], axis=1) for b, a in zip(before, after)], fps=env.metadata["render_fps"])
        print(f"wrote {config.output} (left: before, right: after)")
        env.close()
    problem.close()
    return result


def _frames(env, state: dict[str, np.ndarray], actions: np.ndarray) -> list[np.ndarray]:
    env.set_state(state)
    frames = [env.render()]
    for action in actions:
        env.step(action)
        frames.append(env.render())
    return frames


def write_gif(path: str | Path, frames: list[np.ndarray], *, fps: int) -> None:
    """Write RGB uint8 frames as a looping GIF."""
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
