"""The ``diffenvs`` command line: ``list``, ``demo``, ``optimize``, ``landscape``, ``gradcheck``, ``train``, ``bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_list(args: argparse.Namespace) -> int:
    from diffenvs.registration import ENVS

    width = max(len(info.id) for info in ENVS)
    for info in ENVS:
        print(f"{info.id:<{width}}  {info.summary}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from diffenvs.baselines.demo import DemoConfig, run_demo
    from diffenvs.config import load_yaml
    from diffenvs.configs import CONFIG_DIR

    overrides = {}
    if args.iters is not None:
        overrides["solver.iters"] = args.iters
    if args.seed is not None:
        overrides["problem.seed"] = args.seed
    if args.output is not None:
        overrides["output"] = args.output
    config = load_yaml(DemoConfig, args.config or CONFIG_DIR / "demo.yaml", overrides)
    run_demo(config, progress=not args.no_progress)
    return 0


def parse_sets(pairs: list[str], *, flag: str = "--set") -> dict:
    """``KEY=VALUE`` pairs (values read as YAML) of a repeatable flag."""
    from diffenvs.config import parse_yaml

    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = parse_yaml(text)
    return overrides


def _run_config(args: argparse.Namespace, extra: dict | None = None):
    """The run config of ``optimize`` and ``landscape``: the config file, the flags, ``--hp`` (its keys,
    each checked on its own so that an error names the flag and the key), ``--set`` (env options)."""
    from diffenvs.baselines.runner import resolve_config
    from diffenvs.config import ConfigError

    flags = {"problem.env_id": args.env, "problem.seed": args.seed, "problem.horizon": args.horizon}
    if args.seed is not None:
        flags["solver.seed"] = args.seed
    for key in ("method", "iters"):
        flags[f"solver.{key}"] = getattr(args, key, None)
    flags = {k: v for k, v in flags.items() if v is not None}
    hp = parse_sets(args.hp, flag="--hp")
    for key, value in hp.items():
        try:
            resolve_config(args.config, {**flags, key: value})
        except ConfigError as error:
            raise ConfigError(f"--hp {key}={value}: {error}") from None
    config = resolve_config(args.config, {**flags, **hp, **(extra or {})})
    env_options = parse_sets(args.set, flag="--set")
    if env_options:
        config = resolve_config(args.config, {**flags, **hp, **(extra or {}),
                                              "problem.env_kwargs": {**config.problem.env_kwargs, **env_options}})
    return config


def _env_errors(args: argparse.Namespace):
    """A context that names ``--set`` in an env's error about one of its options."""
    import contextlib

    from diffenvs.config import ConfigError

    @contextlib.contextmanager
    def named():
        try:
            yield
        except ConfigError as error:
            keys = [pair.partition("=")[0].strip() for pair in args.set]
            if any(key and key in str(error) for key in keys):
                raise ConfigError(f"--set (an env option): {error}") from None
            raise

    return named()


def _cmd_optimize(args: argparse.Namespace) -> int:
    from diffenvs.baselines.method import missing_requirements
    from diffenvs.baselines.runner import run_optimize

    overrides = {}
    for flag, key in (("out_dir", "out_dir"), ("run_name", "run_name")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.no_gif:
        overrides["gif"] = False
    if args.no_plot:
        overrides["plot"] = False
    config = _run_config(args, overrides)
    problem = missing_requirements(config.solver.method)
    if problem:
        raise ValueError(problem)
    with _env_errors(args):
        run = run_optimize(config, progress=not args.no_progress, device=args.device)
    if run.status == "interrupted":
        print(f"interrupted; partial results in {run.run_dir}", file=sys.stderr)
        return 130
    result = run.result
    b = result.budget
    print(f"{config.solver.method} on {config.problem.env_id}: loss {result.initial_loss:.4g} -> {result.loss:.4g}, "
          f"{result.metric_name} {result.metric:.3f}; {b['env_steps']} env steps "
          f"({b['grad_evals']} gradients), {b['wall_time']:.1f} s" + (f"; stopped: {result.stopped}" if result.stopped else ""))
    print(f"wrote {run.run_dir}")
    return 0


def _cmd_landscape(args: argparse.Namespace) -> int:
    import numpy as np

    from diffenvs.baselines.landscape import loss_landscape, plot_landscape
    from diffenvs.baselines.problem import Problem

    config = _run_config(args)
    with _env_errors(args):
        problem = Problem(config.problem, device=args.device)
    actions = None
    if args.actions:
        with np.load(args.actions) as saved:
            actions = saved["actions"]
    scape = loss_landscape(problem, actions, dims=args.dims, points=args.points, span=args.span,
                           horizons=args.horizons, seed=config.problem.seed)
    print(f"{'horizon':>8}{'min loss':>12}{'max loss':>12}{'roughness':>11}")
    for h, values, rough in zip(scape.horizons, scape.losses, scape.roughness):
        finite = values[np.isfinite(values)]
        print(f"{h:>8}{finite.min():>12.4g}{finite.max():>12.4g}{rough:>11.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".npz"), alphas=scape.alphas, horizons=scape.horizons, losses=scape.losses,
             roughness=scape.roughness)
    try:
        plot_landscape(scape, out, title=f"{config.problem.env_id}, seed {config.problem.seed}")
        print(f"wrote {out} and {out.with_suffix('.npz')}")
    except ImportError:
        print(f"wrote {out.with_suffix('.npz')} (matplotlib is not installed: no plot)")
    problem.close()
    return 0


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from diffenvs.baselines.gradcheck import DEFAULT_EPS, GradcheckConfig, gradcheck

    config = GradcheckConfig(
        env_id=args.env, env_kwargs=parse_sets(args.set), seed=args.seed, steps=args.steps,
        directions=args.directions, eps=tuple(args.eps or DEFAULT_EPS), objective=args.objective, rtol=args.rtol,
    )
    report = gradcheck(config, device=args.device)
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(report), indent=2), encoding="utf-8")
    return 0 if report.passed else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from diffenvs.baselines.learner import TrainConfig, run_train

    config = TrainConfig(
        env_id=args.env, algo=args.algo, steps=args.steps, seed=args.seed, n_envs=args.n_envs, eval_every=args.eval_every,
        eval_seeds=tuple(args.eval_seeds), instance=args.instance, env_kwargs=parse_sets(args.set, flag="--set"),
        hyperparams=parse_sets(args.hp, flag="--hp"), out_dir=args.out_dir, run_name=args.run_name,
        tensorboard=args.tensorboard,
    )
    with _env_errors(args):
        run = run_train(config, progress=not args.no_progress, hyperparams_path=args.conf_file)
    last = run.evaluations[-1]
    print(f"{config.algo} on {config.env_id}: {run.env_steps} env steps; deterministic policy on instances "
          f"{list(config.eval_seeds)}: {last['metric_name']} {last['metric_mean']:.3f} (untrained "
          f"{run.evaluations[0]['metric_mean']:.3f}), return {last['return_mean']:.4g}")
    print(f"wrote {run.run_dir}")
    if run.status == "interrupted":
        print(f"interrupted; partial results in {run.run_dir}", file=sys.stderr)
        return 130
    return 0


def _study_path(name: str) -> Path:
    """A study config path, or the name of a shipped one (``quick`` -> configs/study/quick.yaml)."""
    path = Path(name)
    if path.exists() or path.suffix:
        return path
    from diffenvs.configs import CONFIG_DIR

    return CONFIG_DIR / "study" / f"{name}.yaml"


def _cmd_compare(args: argparse.Namespace) -> int:
    import logging

    from diffenvs.baselines.execution import run_study
    from diffenvs.baselines.report import write_report
    from diffenvs.baselines.study import load_study

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = {key: value for key, value in (("out_dir", args.out_dir), ("workers", args.workers)) if value is not None}
    # only the methods this call runs must be installed here (--report-only runs none)
    chosen = [] if args.report_only else args.methods
    config = load_study(_study_path(args.config), overrides, methods=chosen)
    replay_flags = [flag for flag, value in (("--noise", args.noise), ("--episodes", args.episodes)) if value is not None]
    if replay_flags and not args.robustness:
        raise ValueError(f"{', '.join(replay_flags)} only apply with --robustness")
    if args.replicate_dir is not None and args.replicate is None:
        raise ValueError("--replicate-dir only applies with --replicate")
    if args.replicate is not None and (args.report_only or args.robustness or args.seeds):
        raise ValueError("--replicate reruns cells on new instances: not with --report-only, --robustness or --seeds")
    part = {key: tuple(getattr(args, key)) if getattr(args, key) else None for key in ("methods", "envs", "seeds")}
    if args.report_only:
        if any(part.values()):
            raise ValueError("--report-only reports the whole study: drop --methods, --envs and --seeds")
        print(f"wrote {write_report(config)}")
        return 0
    if args.replicate is not None:
        from diffenvs.baselines.replicate import replicate

        cells, path = replicate(config, args.replicate, methods=part["methods"], envs=part["envs"],
                                out_dir=args.replicate_dir, backend=args.backend, address=args.address,
                                progress=not args.no_progress)
        for replicated in cells:
            print(replicated.line())
        print(f"wrote {path}")
        return 0
    if args.robustness:
        from diffenvs.baselines.robustness import run_robustness

        given = {key: value for key, value in (("noise", args.noise and tuple(args.noise)), ("episodes", args.episodes))
                 if value is not None}  # the rest: run_robustness's defaults
        paths = run_robustness(config, **given, **part, progress=not args.no_progress)
        print("wrote " + ", ".join(str(path) for path in paths))
        return 0
    try:
        result = run_study(config, backend=args.backend, address=args.address, progress=not args.no_progress, **part)
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are kept in {config.out_dir}/runs: run the same command to resume",
              file=sys.stderr)
        return 130
    print(f"{len(result.ran)} runs finished, {len(result.skipped)} already done, {len(result.failed)} failed")
    for name, error in result.failed.items():
        print(f"  {name}: {error}", file=sys.stderr)
    print(f"wrote {result.report}")
    return 1 if result.failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from diffenvs.bench import run

    worlds = None
    if args.worlds:
        try:
            worlds = [int(w) for w in args.worlds.split(",")]
        except ValueError:
            worlds = []
        if not worlds or min(worlds) < 1:
            raise ValueError(f"--worlds needs comma-separated positive integers, got {args.worlds!r}")
    tasks = args.tasks.split(",") if args.tasks else None
    from diffenvs.bench import DOUGH_TASKS

    if tasks and not set(tasks) <= set(DOUGH_TASKS):
        raise ValueError(f"--tasks takes names from {DOUGH_TASKS}, got {args.tasks!r}")
    batched = None
    if args.batched is not None:
        batched = {}
        for item in args.batched:
            preset, _, counts = item.partition(":")
            try:
                batched[preset] = [int(n) for n in counts.split(",")]
            except ValueError:
                batched[preset] = []
            if preset not in ("default", "paper") or not batched[preset] or min(batched[preset]) < 1:
                raise ValueError(f"--batched takes PRESET:N,N,... with PRESET default or paper, got {item!r}")
    run(quick=args.quick, repeats=args.repeats, json_path=args.json or None, device=args.device, worlds=worlds,
        tasks=tasks, batched=batched, startup=not args.no_startup, batched_task=args.batched_task)
    return 0


def _add_problem_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", help="env id (default from the config: DiffEnvs/Pusher-v0)")
    parser.add_argument("--seed", type=int, help="seed of the initial state and of the optimizer")
    parser.add_argument("--horizon", type=int, help="env steps of the action sequence")
    parser.add_argument("--config", help="YAML run config (default: the packaged configs/optimize.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an env option of the reported setting, e.g. --set tool_softness=0 (repeatable)")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="a key of the run config (configs/optimize.yaml), e.g. --hp solver.gradient.lr=0.2 (repeatable)")
    parser.add_argument("--device", help="Warp device (cpu, cuda)")


def _cmd_upgrade_runs(args: argparse.Namespace) -> int:
    from diffenvs.baselines.rundir import find_runs, upgrade_run

    for root in args.paths:
        runs = find_runs(root)
        if not runs:
            raise ValueError(f"{root}: no run directories found")
        changed = sum(upgrade_run(run) for run in runs)
        print(f"{root}: {len(runs)} runs, {changed} converted to the current layout")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from diffenvs import __version__
    from diffenvs.baselines.method import method_names
    from diffenvs.bench import DOUGH_TASKS

    parser = argparse.ArgumentParser(prog="diffenvs", description="Differentiable Gymnasium environments on NVIDIA Warp.")
    parser.add_argument("--version", action="version", version=f"diffenvs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered environments").set_defaults(func=_cmd_list)
    demo = sub.add_parser("demo", help="optimize a Pusher episode with gradients and write a GIF")
    demo.add_argument("--config", help="YAML config (default: the packaged configs/demo.yaml)")
    demo.add_argument("--iters", type=int, help="gradient iterations")
    demo.add_argument("--seed", type=int, help="seed of the initial state")
    demo.add_argument("--output", help="GIF path ('' for none)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)
    opt = sub.add_parser("optimize", help="optimize an action sequence (gradients, sampling, hybrid, MPC); write a run directory")
    _add_problem_flags(opt)
    opt.add_argument("--method", choices=method_names("optimizer"), help="optimizer")
    opt.add_argument("--iters", type=int, help="gradient iterations or CEM generations")
    opt.add_argument("--out-dir", help="parent folder of the run directory")
    opt.add_argument("--run-name", help="name of the run directory")
    opt.add_argument("--no-gif", action="store_true", help="no GIF of the best episode")
    opt.add_argument("--no-plot", action="store_true", help="no plot of the curve")
    opt.add_argument("--no-progress", action="store_true", help="no progress bar")
    opt.set_defaults(func=_cmd_optimize)
    scape = sub.add_parser("landscape", help="plot the loss along random directions in action space, per horizon")
    _add_problem_flags(scape)
    scape.add_argument("--actions", help="npz with the centre sequence ('actions', e.g. a run's best.npz); default zeros")
    scape.add_argument("--dims", type=int, choices=[1, 2], default=1, help="a line or a plane")
    scape.add_argument("--points", type=int, default=21, help="points per axis")
    scape.add_argument("--span", type=float, default=1.0, help="largest offset [action units]")
    scape.add_argument("--horizons", type=int, nargs="+", help="horizons to report (default: 1/4, 1/2, all)")
    scape.add_argument("--out", default="runs/landscape.png", help="plot path (the losses go to the same name .npz)")
    scape.set_defaults(func=_cmd_landscape)
    check = sub.add_parser("gradcheck", help="compare grad() with finite differences along several directions")
    check.add_argument("--env", required=True, help="env id")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="an env option, e.g. --set preset=paper --set contact_weight=0 (repeatable)")
    check.add_argument("--seed", type=int, default=0, help="seed of the state, actions and directions")
    check.add_argument("--steps", type=int, default=5, help="env steps of the checked episode")
    check.add_argument("--directions", type=int, default=3, help="directions (the gradient's own, then random)")
    check.add_argument("--eps", type=float, nargs="+", help="finite-difference step sizes (default 0.1 ... 0.001)")
    check.add_argument("--objective", choices=["return", "loss"], default="return")
    check.add_argument("--rtol", type=float, help="relative difference that agrees (default: the registry's for the id)")
    check.add_argument("--device", help="Warp device (cpu, cuda)")
    check.add_argument("--json", help="also write the report as JSON to this path")
    check.set_defaults(func=_cmd_gradcheck)
    train = sub.add_parser("train", help="train an RL baseline (stable-baselines3) on an env; writes a run directory")
    train.add_argument("--env", required=True, help="env id")
    train.add_argument("--algo", choices=method_names("learner"), default="ppo",
                       help="stable-baselines3 (ppo, sac, td3) or through the simulator's gradients (apg, shac)")
    train.add_argument("--steps", type=int, help="env steps (default: the config's n_timesteps)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--n-envs", type=int, help="worlds of the training vector env (default: the config's n_envs)")
    train.add_argument("--eval-every", type=int, default=10_000, help="env steps between evaluations")
    train.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2], help="instances (reset seeds) to evaluate on")
    train.add_argument("--instance", type=int, help="train on one instance (this reset seed) and evaluate on it")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an env option (repeatable)")
    train.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                       help="a hyperparameter instead of configs/rl/<algo>.yaml's (repeatable), e.g. --hp learning_rate=1e-3")
    train.add_argument("--conf-file", help="an rl-zoo3 hyperparameter file instead of configs/rl/<algo>.yaml")
    train.add_argument("--out-dir", default="runs/train", help="parent folder of run directories")
    train.add_argument("--run-name", help="run directory name (default: <Task>-<algo>-s<seed>-<time>)")
    train.add_argument("--tensorboard", action="store_true", help="also log to <run>/tensorboard")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)
    compare = sub.add_parser("compare", help="run an RL-versus-gradient study (methods x tasks x seeds) and write its report")
    compare.add_argument("--config", required=True,
                         help="study YAML, or the name of a shipped one (quick, full: configs/study/<name>.yaml)")
    compare.add_argument("--backend", choices=["pool", "ray"], default="pool",
                         help="local process pool, or Ray (pip install 'diffenvs[ray]')")
    compare.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    compare.add_argument("--workers", type=int, help="runs at the same time (default: the config's)")
    compare.add_argument("--out-dir", help="study directory (default: the config's out_dir)")
    compare.add_argument("--report-only", action="store_true", help="only rewrite the report from the finished runs")
    compare.add_argument("--robustness", action="store_true",
                         help="replay the finished runs under actuation noise (open-loop sequences against policies)")
    compare.add_argument("--noise", type=float, nargs="+",
                         help="--robustness: standard deviations of the noise added to every action (0 0.1 0.2 0.4)")
    compare.add_argument("--episodes", type=int, help="--robustness: noisy episodes per run and level (16)")
    compare.add_argument("--methods", nargs="+",
                         help="run (or, with --robustness, replay) only these methods (labels of the study); "
                              "the report covers every finished run")
    compare.add_argument("--envs", nargs="+", help="run (or replay) only these env ids of the study")
    compare.add_argument("--seeds", nargs="+", type=int,
                         help="run (or replay) only these seeds (instances) of the study, e.g. one seed per process")
    compare.add_argument("--replicate", type=int, nargs="+", metavar="SEED",
                         help="rerun the study's cells (or --methods / --envs) on these instances it never saw and "
                              "print, per cell, whether the new values fall inside the published interval")
    compare.add_argument("--replicate-dir", help="--replicate: study directory of the new runs "
                                                 "(default runs/replicate/<the study directory's name>)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar")
    compare.set_defaults(func=_cmd_compare)

    upgrade = sub.add_parser("upgrade-runs", help="convert run directories of older layouts (in place) to the current one")
    upgrade.add_argument("paths", nargs="+", help="run directories or folders holding them (e.g. results/full/runs)")
    upgrade.set_defaults(func=_cmd_upgrade_runs)

    bench = sub.add_parser("bench", help="measure speed, memory and start-up; print a table and write JSON")
    bench.add_argument("--quick", action="store_true", help="default preset only, one repeat, up to 16 worlds, three dough tasks")
    bench.add_argument("--repeats", type=int, default=3, help="repeats per figure (median)")
    bench.add_argument("--json", default="diffenvs_bench.json", help="JSON output path ('' for none)")
    bench.add_argument("--device", default="cpu", help="Warp device of every figure (cpu, cuda)")
    bench.add_argument("--worlds", help="the Pusher's world counts, comma-separated (default 1,16,256)")
    bench.add_argument("--tasks", help="dough tasks of the per-episode table, comma-separated (default all)")
    bench.add_argument("--batched", action="append", metavar="PRESET:N,N",
                       help="batched dough world counts per preset (repeatable; default on CUDA paper:1,64,256 and "
                            "default:1,256,4096)")
    bench.add_argument("--batched-task", default="Move", choices=DOUGH_TASKS,
                       help="dough task of the batched rows (default Move: its reset runs no demonstration)")
    bench.add_argument("--no-startup", action="store_true", help="skip the start-up figures")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from diffenvs.warp_util import quiet_warp

    quiet_warp()  # Warp's own messages: DIFFENVS_WARP_VERBOSE=1
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"diffenvs {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
