"""One interface for every method above the envs, and the registry of methods.

A *method* is anything that turns a problem instance and a budget into something that acts:
a trajectory optimizer (``kind="optimizer"``: Adam on ``grad()``, CEM, CMA-ES, ...) produces an
open-loop action sequence, a learner (``kind="learner"``: PPO, SAC, TD3 from stable-baselines3;
APG and SHAC through the simulator) produces a policy. Every method, as every stable-baselines3
algorithm has ``learn``/``predict``/``save``/``load``, has

- :meth:`Method.resolve`: the configuration it would run for a :class:`Request` (defaults, the
  env's section, the request's options), checked before anything runs;
- :meth:`Method.solve`: one run into a run directory (:mod:`diffenvs.baselines.rundir`: the same
  files and keys for every method), within the request's budget of env steps;
- :meth:`Method.load`: what that run produced, as a :class:`Policy` (``policy(obs) -> action``,
  for a sequence as for a network).

The CLI's choices, the study's execution, the robustness replays and the tuner read the registry
(:func:`get_method`, :func:`method_names`). Adding a method is its own module and one
:func:`register` line below; nothing else branches on method names.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from diffenvs.config import ConfigError

Kind = Literal["optimizer", "learner"]
KINDS: tuple[str, ...] = ("optimizer", "learner")


@dataclasses.dataclass(frozen=True)
class Request:
    """What one run of a method is asked to do.

    Attributes:
        env_id: A registered diffenvs id.
        seed: Seed of the method's own randomness.
        instance: The problem instance (reset seed) to solve (an optimizer) or to train on (a
            learner: every episode starts from it), judged on it alone. ``None``: held-out
            instances ``eval_seeds``: a learner trains on random instances and is judged on them, an
            optimizer solves each with an equal share of the budget.
        eval_seeds: With ``instance=None``: the instances the result is judged on.
        budget: Env steps the run may simulate (forward, backward and replays; RL: training
            steps); ``None``: the method's configured length.
        env_kwargs: The reported setting (env keyword arguments; ``max_episode_steps`` sets the
            episode length and an optimizer's horizon).
        options: The method's own keys: dotted keys of ``configs/optimize.yaml`` for an optimizer
            (``solver.cem.population``), hyperparameters for a learner (``learning_rate``, ``n_envs``).
        eval_every: Learners: env steps between evaluations; ``None``: a twentieth of the budget.
        device: Warp device (``None``: Warp's default).
    """

    env_id: str
    seed: int = 0
    instance: int | None = 0
    eval_seeds: tuple[int, ...] = ()
    budget: int | None = None
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_every: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.instance is None and not self.eval_seeds:
            raise ConfigError("a request without an instance needs eval_seeds (the held-out instances)")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"budget must be >= 1 env step or None, got {self.budget}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {self.eval_every}")

    @property
    def judged_on(self) -> tuple[int, ...]:
        """The instances the result is judged on."""
        return (self.instance,) if self.instance is not None else tuple(self.eval_seeds)


class Policy(Protocol):
    """What a run produced, as something that acts on a batch of observations."""

    def reset(self) -> None:
        """Start a new episode (a sequence goes back to its first action)."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Actions (n, action_dim) for observations (n, obs_dim)."""


class SequencePolicy:
    """An open-loop action sequence as a policy that ignores its observations (the last action
    repeats past the sequence's end)."""

    def __init__(self, actions: np.ndarray):
        self.actions = np.asarray(actions, dtype=np.float64)
        self.t = 0

    def reset(self) -> None:
        self.t = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = self.actions[min(self.t, len(self.actions) - 1)]
        self.t += 1
        return np.broadcast_to(action, (np.shape(obs)[0], action.shape[0]))


class ModelPolicy:
    """A trained network's deterministic actions (anything with SB3's ``predict``), with an optional
    observation normalizer (SB3's ``VecNormalize``)."""

    def __init__(self, model: Any, normalizer: Any = None):
        self.model, self.normalizer = model, normalizer

    def reset(self) -> None:
        pass

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.normalizer is not None:
            obs = self.normalizer.normalize_obs(obs)
        action, _ = self.model.predict(obs, deterministic=True)
        return np.asarray(action, dtype=np.float64)


class Method(abc.ABC):
    """A registered method; see the module docstring.

    Attributes:
        name: Registry key (``adam``, ``ppo``).
        kind: ``optimizer`` or ``learner``.
        config_class: The typed configuration it resolves to (``None``: free-form keyword
            arguments of a library's class, checked against its signature).
    """

    kind: ClassVar[Kind]
    config_class: ClassVar[type | None] = None

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @abc.abstractmethod
    def resolve(self, request: Request) -> dict[str, Any]:
        """The configuration a run of ``request`` uses, as a plain dict (what ``config.yaml`` records
        and a resumed study compares).

        Raises:
            ConfigError: an unknown or invalid option, naming it.
        """

    @abc.abstractmethod
    def solve(self, request: Request, run_dir: str | Path, *, progress: bool = False) -> Any:
        """Run ``request`` into ``run_dir`` (created; it must not exist) and return its
        :class:`~diffenvs.baselines.rundir.Run`. Ctrl-C ends the run with status ``interrupted`` and
        valid files."""

    @abc.abstractmethod
    def load(self, run_dir: str | Path) -> Policy | None:
        """The run's result (its best sequence or best evaluated policy) as a policy; ``None`` when
        the run directory holds no artifact (model files are not committed)."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    kind: Kind
    entry_point: str
    requires: tuple[str, ...]
    extra: str | None


_REGISTRY: dict[str, _Entry] = {}
_LOADED: dict[str, Method] = {}


def register(name: str, entry_point: str, *, kind: Kind, requires: tuple[str, ...] = (), extra: str | None = None) -> None:
    """Register method ``name``: ``entry_point`` (``module:factory``) is called with the name when the
    method is first used, so listing methods imports nothing heavy.

    Args:
        name: Registry key.
        entry_point: ``module:callable`` returning the :class:`Method`.
        kind: ``optimizer`` or ``learner`` (known without importing the module).
        requires: Importable modules it needs beyond the core install.
        extra: The ``pip install 'diffenvs[EXTRA]'`` that brings them.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _REGISTRY[name] = _Entry(kind, entry_point, tuple(requires), extra)
    _LOADED.pop(name, None)


def method_names(kind: Kind | None = None) -> tuple[str, ...]:
    """Registered method names (of one kind), in registration order."""
    return tuple(name for name, entry in _REGISTRY.items() if kind is None or entry.kind == kind)


def method_kind(name: str) -> Kind:
    """The kind of a registered method.

    Raises:
        ConfigError: an unknown name, listing the known ones.
    """
    return _entry(name).kind


def missing_requirements(name: str) -> str | None:
    """A one-line message naming the extra to install when method ``name`` cannot run here, else ``None``."""
    entry = _entry(name)
    missing = [module for module in entry.requires if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return f"method {name!r} needs {', '.join(missing)}: pip install 'diffenvs[{entry.extra}]'"


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        ConfigError: an unknown name, or a method whose optional install is missing (naming the extra).
    """
    entry = _entry(name)
    if name not in _LOADED:
        problem = missing_requirements(name)
        if problem:
            raise ConfigError(problem)
        module, _, attr = entry.entry_point.partition(":")
        factory: Callable[[str], Method] = getattr(importlib.import_module(module), attr)
        method = factory(name)
        if method.kind != entry.kind:
            raise TypeError(f"{entry.entry_point} made a {method.kind}, registered as a {entry.kind}")
        _LOADED[name] = method
    return _LOADED[name]


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; the methods are {list(_REGISTRY)}")
    return _REGISTRY[name]


# The registry ----------------------------------------------------------------------------------------
# Optimizers (diffenvs.baselines.trajopt's algorithms; configs/optimize.yaml), then learners
# (configs/rl/<name>.yaml). The study's rows, the CLI's choices and the replays follow this table.

_OPTIMIZER = "diffenvs.baselines.runner:OptimizerMethod"
for _name in ("adam", "gd", "reinforce", "cem", "cmaes", "hybrid", "random", "mpc"):
    register(_name, _OPTIMIZER, kind="optimizer", **({"requires": ("cma",), "extra": "rl"} if _name == "cmaes" else {}))
for _name in ("ppo", "sac", "td3"):
    register(_name, "diffenvs.baselines.rl:SB3Learner", kind="learner", requires=("stable_baselines3", "torch"), extra="rl")
for _name in ("apg", "shac"):
    register(_name, "diffenvs.baselines.diffrl:DiffRLLearner", kind="learner", requires=("torch",), extra="rl")
del _name


__all__ = [
    "KINDS",
    "Method",
    "ModelPolicy",
    "Policy",
    "Request",
    "SequencePolicy",
    "get_method",
    "method_kind",
    "method_names",
    "missing_requirements",
    "register",
]
