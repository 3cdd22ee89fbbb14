"""The demo behind ``diffenvs demo``: optimize a Pusher episode with gradients and show it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from diffenvs.baselines.trajopt import AdamConfig, TrajOptResult, optimize_actions


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Options of the demo (``configs/demo.yaml``).

    Attributes:
        env_id: Registered env to optimize.
        seed: Seed of the env's initial state.
        env_kwargs: Keyword arguments of ``gym.make`` used while optimizing.
        optimizer: Adam options.
        output: Path of the GIF (before | after); empty for none.
    """

    env_id: str = "DiffEnvs/Pusher-v0"
    seed: int = 0
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: AdamConfig = AdamConfig()
    output: str = "diffenvs_demo.gif"


def run_demo(config: DemoConfig, *, progress: bool = True) -> TrajOptResult:
    """Optimize one episode, print the loss falling, write the GIF; return the result."""
    import diffenvs  # noqa: F401  (registers the envs)

    env = gym.make(config.env_id, render_mode="rgb_array", **config.env_kwargs).unwrapped
    env.reset(seed=config.seed)
    state = env.get_state()
    bar = tqdm(total=config.optimizer.iters, desc=f"Adam on {config.env_id}", disable=not progress, unit="it")

    def show(record: dict[str, float], actions: np.ndarray) -> None:
        bar.set_postfix(loss=f"{record['loss']:.4f}", ret=f"{record['return']:.3f}")
        bar.update()

    result = optimize_actions(env, config.optimizer, state=state, callback=show)
    bar.close()
    reduction = 1.0 - result.best_loss / result.initial_loss
    print(f"task loss {result.initial_loss:.4f} -> {result.best_loss:.4f} ({100 * reduction:.1f}% lower) "
          f"in {config.optimizer.iters} gradient iterations")
    if config.output:
        before = _frames(env, state, np.zeros_like(result.actions))
        after = _frames(env, state, result.actions)
        write_gif(config.output, [np.concatenate([b, a], axis=1) for b, a in zip(before, after)], fps=env.metadata["render_fps"])
        print(f"wrote {config.output} (left: before, right: after)")
    env.close()
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
