"""The RL-versus-gradient comparison study: the code behind ``diffenvs compare``.

A study runs every method on every task and problem instance (a reset seed: its start state and
target) and reports which wins, by how much, and at what cost. The protocol (``protocol:
instance``; ``protocol: generalize`` instead judges policies trained on random instances on
held-out ones, see :class:`StudyConfig`):

- every method gets the same instance: the optimizers (``kind: optimize``, the methods of
  :func:`~diffenvs.baselines.trajopt.optimize` with ``configs/optimize.yaml`` and its per-env
  section) optimize an action sequence from it; the RL algorithms (``kind: train``, ``configs/rl``)
  train on it (every episode resets to that instance, ``TrainConfig.instance``);
- every method is judged in the reported setting (the study's ``env_kwargs`` per env: hard tools,
  no contact loss), by the task metric (``info[task.metric]``: 0 at the start state, 1 solved):
  an optimizer by its best sequence, an RL algorithm by the deterministic episode of its best
  evaluated policy (rl-zoo3's ``best_model``);
- budgets are simulated env steps (forward, backward and replays counted as
  :class:`~diffenvs.baselines.problem.Budget` counts them; RL: training env steps), and wall time
  is recorded at every evaluation of every run. An optimizer never exceeds its budget
  (``SolverConfig.budget``: it stops before an iteration that would); an RL algorithm finishes its
  last rollout (PPO: up to ``n_envs * n_steps`` steps past the budget), as stable-baselines3 does.
  Each run's spent env steps are in the report.

The study directory (``out_dir``) holds ``study.yaml`` (the config, less ``out_dir`` and ``workers``),
``runs/<Task>-<label>-s<seed>/`` (each run's directory in the one layout of
:mod:`diffenvs.baselines.rundir`, plus ``job.json``: the job and the configuration it resolved to),
and the report (:mod:`diffenvs.baselines.report`).

This module is the job model: the config, its validation, and the runs it implies. Executing them
(resumable, on a local process pool or Ray) is :mod:`diffenvs.baselines.execution`'s; every run is
one :meth:`~diffenvs.baselines.method.Method.solve` of a registered method, whatever its kind.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from diffenvs.baselines.method import Request, get_method, method_kind
from diffenvs.config import ConfigError, from_dict, read_yaml, to_dict, write_yaml
from diffenvs.registration import task_name

STUDY_KINDS = {"optimizer": "optimize", "learner": "train"}
"""A method's kind as a study config names it (``kind: optimize`` or ``kind: train``)."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method of a study (a row of every task's table).

    Attributes:
        method: A registered method (:func:`~diffenvs.baselines.method.method_names`).
        budget: Env steps the method may simulate on one instance.
        kind: ``optimize`` or ``train``; derived from the registry (a given value must match it).
        set: The method's own options: for an optimizer, dotted keys of ``configs/optimize.yaml``
            (``solver.cem.population``); for a learner, hyperparameters (``learning_rate``, ``n_envs``).
        eval_every: Learners: env steps between evaluations of the policy; ``None``: a twentieth
            of the budget.
        envs: The study's env ids this method runs on; empty: all of them. For a method too costly to
            run everywhere, chosen up front: the report names the tasks it was not run on.
    """

    kind: Literal["optimize", "train"] | None = None
    method: str = ""
    budget: int = 0
    set: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_every: int | None = None
    envs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        kind = STUDY_KINDS[method_kind(self.method)]  # ConfigError for an unknown method
        if self.kind is not None and self.kind != kind:
            raise ValueError(f"method {self.method!r} is of kind {kind!r}, not {self.kind!r}")
        object.__setattr__(self, "kind", kind)
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 env step, got {self.budget}")
        if self.eval_every is not None and (kind != "train" or self.eval_every < 1):
            raise ValueError("eval_every is an option of learners (kind: train), >= 1")

@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A study: methods x envs x seeds (``configs/study/<name>.yaml``).

    Attributes:
        name: Title of the report.
        envs: Registered env ids (one panel and one table each).
        seeds: Problem instances (reset seeds), chosen up front; also the seed of each method's own
            randomness unless ``train_seeds`` is given. ``generalize``: the training seeds.
        env_seeds: Env id -> its own instances instead of ``seeds`` (e.g. ten for a cheap task,
            five for an expensive one).
        train_seeds: ``instance`` protocol: seeds of the methods' own randomness, each run on every
            instance (runs ``<Task>-<label>-s<instance>-t<seed>``): the spread a training seed
            alone causes. Empty: one run per instance, seeded with the instance's seed.
        methods: Label -> method (the labels name the runs and the rows of the tables).
        env_kwargs: Env id -> env keyword arguments of the reported setting, for every method on
            that env (e.g. ``{tool_softness: 0.0}``: hard tools); envs not listed use their defaults.
            ``max_episode_steps`` (``gym.make``'s) sets the episode length for every method: the
            learners' episodes and the optimizers' sequence length (``problem.horizon``).
        out_dir: The study directory; ``None`` (the shipped configs): ``runs/study/<name of the
            config file>``, so that running a shipped study never writes into the committed
            ``results/`` (read those with ``--report-only --out-dir results/<name>``).
        workers: Runs at the same time (processes of the pool; Ray tasks in flight).
        bootstrap_reps: Bootstrap resamples of the confidence intervals.
        protocol: ``instance``: every method on each instance of ``seeds`` (optimizers optimize it,
            learners train on it). ``generalize``: policies train on random instances (``seeds``
            seed their training) and are judged, by their final policy, on the held-out instances
            ``test_seeds``; the optimizers solve each held-out instance with an equal share of the
            same total budget (per-instance Adam against one policy for all).
        test_seeds: ``generalize``: the held-out instances (reset seeds).
        budget_scale: Env id -> factor of every method's budget on that env (e.g. its number of
            stages, for a fixed budget per stage); envs not listed: 1.
    """

    name: str
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: dict[str, MethodSpec]
    env_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    out_dir: str | None = None
    workers: int = 2
    bootstrap_reps: int = 2000
    protocol: Literal["instance", "generalize"] = "instance"
    test_seeds: tuple[int, ...] = ()
    env_seeds: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    train_seeds: tuple[int, ...] = ()
    budget_scale: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.out_dir is None:  # load_study names it after the config file; built in Python, after the name
            slug = "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-") or "study"
            object.__setattr__(self, "out_dir", f"runs/study/{slug}")
        if not self.envs or not self.seeds or not self.methods:
            raise ValueError("envs, seeds and methods must not be empty")
        for env_id, seeds in self.env_seeds.items():
            if env_id not in self.envs:
                raise ValueError(f"env_seeds names an env that is not in envs: {env_id!r}")
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(f"env_seeds[{env_id!r}] must be non-empty and must not repeat")
        if self.train_seeds and (self.protocol != "instance" or len(set(self.train_seeds)) != len(self.train_seeds)):
            raise ValueError("train_seeds: distinct seeds, for protocol instance only (generalize: seeds are training seeds)")
        if (self.protocol == "generalize") != bool(self.test_seeds):
            raise ValueError("test_seeds: needed by protocol generalize, and only by it")
        if len(set(self.test_seeds)) != len(self.test_seeds):
            raise ValueError("test_seeds must not repeat")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.envs)) != len(self.envs):
            raise ValueError("envs and seeds must not repeat")
        for key in ("env_kwargs", "budget_scale"):
            unknown = sorted(set(getattr(self, key)) - set(self.envs))
            if unknown:
                raise ValueError(f"{key} names envs that are not in envs: {unknown}")
        if any(not scale > 0 for scale in self.budget_scale.values()):
            raise ValueError("budget_scale factors must be > 0")
        for label, spec in self.methods.items():
            unknown = sorted(set(spec.envs) - set(self.envs))
            if unknown:
                raise ValueError(f"methods.{label}.envs names envs that are not in envs: {unknown}")
            if not label.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"method label {label!r}: letters, digits, '-' and '_' only (it names directories)")
        if self.workers < 1 or self.bootstrap_reps < 100:
            raise ValueError("workers must be >= 1 and bootstrap_reps >= 100")

    def runs_on(self, label: str, env_id: str) -> bool:
        """Whether method ``label`` runs on ``env_id`` (its ``envs``, if given)."""
        return not self.methods[label].envs or env_id in self.methods[label].envs

    def instances(self, env_id: str) -> tuple[int, ...]:
        """The instances (reset seeds) of ``env_id``: its ``env_seeds`` or the study's ``seeds``."""
        return tuple(self.env_seeds.get(env_id, self.seeds))

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """Every instance of any env, in order of first appearance."""
        return tuple(dict.fromkeys(seed for env_id in self.envs for seed in self.instances(env_id)))


@dataclasses.dataclass(frozen=True)
class RunJob:
    """One run of a study: a method on one instance of one env (what a worker receives)."""

    name: str
    env_id: str
    label: str
    seed: int
    spec: MethodSpec
    env_kwargs: dict[str, Any]
    test_seeds: tuple[int, ...] = ()  # protocol generalize: the held-out instances
    train_seed: int | None = None  # the method's seed when it is not the instance's (StudyConfig.train_seeds)

    def request(self) -> Request:
        """What the job asks of its method: its instance (``instance`` protocol), or training on
        random instances judged on the held-out ones (``generalize``); the method is seeded with
        ``train_seed``, or else with ``seed``."""
        return Request(env_id=self.env_id, seed=self.seed if self.train_seed is None else self.train_seed,
                       instance=None if self.test_seeds else self.seed,
                       eval_seeds=tuple(self.test_seeds), budget=self.spec.budget, env_kwargs=dict(self.env_kwargs),
                       options=dict(self.spec.set), eval_every=self.spec.eval_every)


def load_study(path: str | Path, overrides: dict[str, Any] | None = None, *,
               methods: Iterable[str] | None = None) -> StudyConfig:
    """Read and check a study config (``overrides``: top-level keys such as ``out_dir``), before any run.

    Checks the keys and types, that every env id is registered, and that every method (or only the
    labels ``methods``: the ones a sitting will run, so that a method whose optional install is
    missing here matters only where it runs) resolves its configuration on every env.

    Raises:
        ConfigError: naming the bad key, or the extra a chosen method needs.
    """
    values = {**read_yaml(path), **(overrides or {})}
    if values.get("out_dir") is None:
        values["out_dir"] = str(Path("runs") / "study" / Path(path).stem)
    config = from_dict(StudyConfig, values, where=str(path))
    validate(config, where=str(path), todo=None if methods is None else select(config, methods=methods))
    return config


def validate(config: StudyConfig, *, where: str = "study", todo: Iterable[RunJob] | None = None) -> None:
    """Check what the dataclasses cannot: env ids, and each job's configuration (``todo``: only these
    jobs, e.g. the ones a sitting will run, so a method whose optional install is missing here only
    matters where it runs).

    Raises:
        ConfigError: naming the bad key.
    """
    import gymnasium as gym

    import diffenvs  # noqa: F401  (registers the ids)

    for env_id in config.envs:
        if env_id not in gym.registry:
            raise ConfigError(f"{where}: envs: unknown env id {env_id!r}; see `diffenvs list`")
    seen = set()
    for job in jobs(config) if todo is None else todo:
        key = (job.label, job.env_id)
        if key in seen:  # a method resolves the same on every instance
            continue
        seen.add(key)
        try:
            get_method(job.spec.method).resolve(job.request())
        except ConfigError as error:
            raise ConfigError(f"{where}: methods.{job.label}: {error}") from None


def jobs(config: StudyConfig) -> list[RunJob]:
    """Every run of the study, method by method (in the config's order: put the cheap ones first, so
    that a study stopped early has every task's cheap rows), env by env, seed by seed."""
    train_seeds: tuple[int | None, ...] = config.train_seeds or (None,)
    def scaled(spec: MethodSpec, env_id: str) -> MethodSpec:
        scale = config.budget_scale.get(env_id, 1)
        return spec if scale == 1 else dataclasses.replace(spec, budget=max(1, round(spec.budget * scale)))

    return [RunJob(name=f"{task_name(env_id)}-{label}-s{seed}" + ("" if train is None else f"-t{train}"), env_id=env_id,
                   label=label, seed=seed, spec=scaled(spec, env_id), env_kwargs=dict(config.env_kwargs.get(env_id, {})),
                   test_seeds=tuple(config.test_seeds), train_seed=train)
            for label, spec in config.methods.items() for env_id in config.envs if config.runs_on(label, env_id)
            for seed in config.instances(env_id) for train in train_seeds]


def select(config: StudyConfig, *, methods: Iterable[str] | None = None, envs: Iterable[str] | None = None,
           seeds: Iterable[int] | None = None) -> list[RunJob]:
    """The study's runs of some methods (labels) on some envs (ids) and seeds; ``None``: all of them.

    Raises:
        ConfigError: a label, env id or seed that is not in the study.
    """
    given = {"methods": methods, "envs": envs, "seeds": seeds}
    known = {"methods": config.methods, "envs": config.envs, "seeds": config.all_seeds}
    for key, values in given.items():
        unknown = sorted(set(values or ()) - set(known[key]))
        if unknown:
            raise ConfigError(f"{key} {unknown} are not in the study ({sorted(known[key])})")
    wanted = {key: None if values is None else set(values) for key, values in given.items()}
    return [job for job in jobs(config)
            if all(wanted[key] is None or value in wanted[key]
                   for key, value in (("methods", job.label), ("envs", job.env_id), ("seeds", job.seed)))]


def job_dict(job: RunJob) -> dict[str, Any]:
    """The job and the configuration it resolves to (``job.json``): a finished run counts for a
    restarted study only if both are unchanged (e.g. after a re-tuning)."""
    values = dataclasses.asdict(job)
    values["spec"].pop("envs")  # where the method runs, not how: as before the key existed
    if not job.test_seeds:
        values.pop("test_seeds")  # protocol instance: as before the generalize protocol existed
    if job.train_seed is None:
        values.pop("train_seed")  # one run per instance: as before training seeds existed
    resolved = get_method(job.spec.method).resolve(job.request())
    return json.loads(json.dumps({**values, "resolved": resolved}))


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    """A job dict without what its run ignores: a learner trains for the study's budget, not for its
    section's ``n_timesteps`` (a changed default training length keeps finished runs valid), and an
    option that is off (``None`` or ``False``) distinguishes nothing: ``n_envs`` of older job files, and
    options added to the solver after a run was recorded (``contact_discovery``, ``discovery_stages``),
    which that run ran without."""
    resolved = {key: value for key, value in job.get("resolved", {}).items() if key != "n_timesteps"}
    spec = {key: value for key, value in job.get("spec", {}).items() if value is not None and key != "envs"}
    return {**job, "spec": spec, "resolved": _without_off(resolved)}


def _without_off(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _without_off(value) for key, value in tree.items() if value is not None and value is not False}
    return tree


def write_config(config: StudyConfig) -> None:
    """``study.yaml``: what was studied (not where, nor with how many workers: choices of one sitting)."""
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    write_yaml(Path(config.out_dir) / "study.yaml",
               {key: value for key, value in to_dict(config).items() if key not in ("out_dir", "workers")})


__all__ = ["MethodSpec", "RunJob", "StudyConfig", "comparable", "job_dict", "jobs", "load_study", "select", "validate",
           "write_config"]
