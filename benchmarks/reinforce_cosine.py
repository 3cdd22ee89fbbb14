"""How many REINFORCE samples match the analytic gradient's direction?

For a few action sequences per task (zeros, and uniform random ones), the cosine similarity
between the likelihood-ratio estimate (``reinforce_gradient``: Gaussian perturbations of std
``--std``, mean-return baseline) and ``grad()`` of the same return, against the sample count;
medians over ``--repeats`` independent estimates. The estimate is of the gradient of the smoothed
return E[R(a + std eps)] (perturbed actions clipped to [-1, 1]), so it need not reach 1 where the
return is rough::

    python benchmarks/reinforce_cosine.py                         # every id, horizon 50
    python benchmarks/reinforce_cosine.py --envs DiffEnvs/Pusher-v0 --samples 4 16 64 256 1024
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    import diffenvs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=[info.id for info in diffenvs.ENVS])
    parser.add_argument("--samples", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sequences", type=int, default=3, help="zeros, then uniform random sequences")
    parser.add_argument("--std", type=float, default=0.2)
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/reinforce_cosine.json")
    args = parser.parse_args()

    import numpy as np
    import warp as wp

    wp.config.log_level = 30
    from diffenvs.baselines.problem import Problem, ProblemConfig
    from diffenvs.baselines.trajopt import reinforce_gradient

    rng = np.random.default_rng(args.seed)
    rows = []
    print(f"cosine(REINFORCE estimate, grad()) of the return, std {args.std}, horizon {args.horizon}, "
          f"medians of {args.repeats} estimates")
    print(f"| id | sequence | {' | '.join(f'N={n}' for n in args.samples)} |")
    print(f"|---|---|{'---|' * len(args.samples)}")
    for env_id in args.envs:
        problem = Problem(ProblemConfig(env_id=env_id, seed=args.seed, horizon=args.horizon, eval_batch=64))
        for index in range(args.sequences):
            mean = np.zeros(problem.action_shape) if index == 0 else rng.uniform(-1, 1, size=problem.action_shape)
            exact = problem.value_and_grad(mean[None]).grads[0]
            cosines = {}
            for n in args.samples:
                values = []
                for _ in range(args.repeats):
                    noise = rng.standard_normal((n, *problem.action_shape))
                    returns, _ = problem.returns(np.clip(mean + args.std * noise, -1.0, 1.0))
                    g = reinforce_gradient(mean, returns, noise, args.std)
                    norm = np.linalg.norm(g) * np.linalg.norm(exact)
                    values.append(float(np.sum(g * exact) / norm) if norm > 0 else 0.0)
                cosines[n] = float(np.median(values))
            name = "zeros" if index == 0 else f"random {index}"
            rows.append({"env_id": env_id, "sequence": name, "cosine": cosines, "grad_norm": float(np.linalg.norm(exact))})
            print(f"| {env_id} | {name} | {' | '.join(f'{cosines[n]:.2f}' for n in args.samples)} |", flush=True)
        problem.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
