"""The ``diffenvs`` command line: ``diffenvs list``, ``diffenvs demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_list(args: argparse.Namespace) -> int:
    from diffenvs.registration import ENVS

    width = max(len(info.id) for info in ENVS)
    for info in ENVS:
        print(f"{info.id:<{width}}  {info.summary}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import warp as wp

    wp.config.log_level = 30  # warnings and errors only (no init banner, no module-load lines)

    from diffenvs.baselines.demo import DemoConfig, run_demo
    from diffenvs.config import load_yaml
    from diffenvs.configs import CONFIG_DIR

    overrides = {}
    if args.iters is not None:
        overrides["optimizer.iters"] = args.iters
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.output is not None:
        overrides["output"] = args.output
    config = load_yaml(DemoConfig, args.config or CONFIG_DIR / "demo.yaml", overrides)
    run_demo(config, progress=not args.no_progress)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from diffenvs.bench import run

    run(quick=args.quick, repeats=args.repeats, json_path=args.json or None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffenvs", description="Differentiable Gymnasium environments on NVIDIA Warp.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered environments").set_defaults(func=_cmd_list)
    demo = sub.add_parser("demo", help="optimize a Pusher episode with gradients and write a GIF")
    demo.add_argument("--config", help="YAML config (default: the packaged configs/demo.yaml)")
    demo.add_argument("--iters", type=int, help="gradient iterations")
    demo.add_argument("--seed", type=int, help="seed of the initial state")
    demo.add_argument("--output", help="GIF path ('' for none)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)
    bench = sub.add_parser("bench", help="measure speed, memory and start-up; print a table and write JSON")
    bench.add_argument("--quick", action="store_true", help="default preset only, one repeat, up to 16 worlds")
    bench.add_argument("--repeats", type=int, default=3, help="repeats per figure (median)")
    bench.add_argument("--json", default="diffenvs_bench.json", help="JSON output path ('' for none)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"diffenvs {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
