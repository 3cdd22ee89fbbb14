"""Did an earlier release of a study hold on the instances added since? Its cells against today's.

A study grown from three instances per cell to more (issue 34: the full study, first released on
instances 0-2, now on ten Pusher and five dough instances) can check its first release the way
``diffenvs compare --replicate`` checks a published study: for every cell, the first release's IQM and
interval as published (a bootstrap over its instances, however few), the values on the instances
added since, how many of them fall inside that interval, whether their IQM does, and the cell today
over every instance. Read it as :mod:`diffenvs.baselines.replicate` says: the interval is for the IQM,
so single new values fall outside it often; a new IQM outside it, with the new values on one side,
says the cell did not hold.

    python benchmarks/releases.py results/full-v1 results/full --out results/full/releases.md

Both directories hold a study's ``final.csv`` (one row per finished run).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from diffenvs.baselines.replicate import Replicated
from diffenvs.baselines.report import Cell, cell, interval, iqm
from diffenvs.registration import task_name

REPS = 2000  # the studies' bootstrap_reps


def read_final(study_dir: Path) -> dict[tuple[str, str], dict[int, float]]:
    """(env id, method) -> {instance: metric} of a study's ``final.csv``."""
    path = study_dir / "final.csv"
    if not path.is_file():
        raise SystemExit(f"releases: {path} not found (a study directory holds final.csv)")
    values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            values[(row["env_id"], row["method"])][int(row["seed"])] = float(row["metric"])
    return values


def as_published(values: list[float]) -> Cell:
    """The cell as the release printed it: IQM and bootstrap interval whatever the n."""
    middle, low, high = interval(values, reps=REPS)
    return Cell(tuple(values), middle, low, high)


def compare(first: dict[tuple[str, str], dict[int, float]], now: dict[tuple[str, str], dict[int, float]]
            ) -> list[tuple[Replicated, Cell]]:
    """Per cell of the first release with runs on new instances since: the comparison and today's cell."""
    rows = []
    for key, before in first.items():
        after = now.get(key, {})
        added = [after[seed] for seed in sorted(after) if seed not in before]
        if not added:
            continue
        published = as_published([before[seed] for seed in sorted(before)])
        new = Cell(tuple(added), float(iqm(np.asarray(added))), float("nan"), float("nan"))  # judged against the first interval
        today = cell({seed: [after[seed]] for seed in sorted(after)}, reps=REPS)
        rows.append((Replicated(key[0], key[1], published, new), today))
    return rows


def markdown(rows: list[tuple[Replicated, Cell]], first: str, now: str) -> str:
    held = sum(bool(r.iqm_inside) for r, _ in rows)
    inside = sum(r.values_inside or 0 for r, _ in rows)
    total = sum(r.new.n for r, _ in rows)
    lines = [f"# Did `{first}` hold? Its cells on the instances added since", "",
             (f"`python benchmarks/releases.py {first} {now}`. Per cell: the first release's IQM [95% interval] as "
              "published (a bootstrap over its instances), the values on the instances added since, how many fall "
              "inside that interval, whether their IQM does, and the cell today over every instance (IQM [95% "
              "interval] from five instances on, else the runs). The interval is for the IQM, so single new values "
              "fall outside it often; a new IQM outside it, with the new values on one side, says the cell did not "
              f"hold. **{held} of {len(rows)} cells' new IQM inside the first interval; {inside} of {total} new "
              "values inside.**"), "",
             "| task | method | first release (n) | new values | new IQM inside | new values inside | today (n) |",
             "|---|---|---|---|---|---|---|"]
    for r, today in rows:
        verdict = "yes" if r.iqm_inside else "**no**"
        lines.append(f"| {task_name(r.env_id)} | {r.method} | {r.published.text()} ({r.published.n}) "
                     f"| {', '.join(f'{v:.3f}' for v in r.new.values)} | {verdict} ({r.new.iqm:.3f}) "
                     f"| {r.values_inside} of {r.new.n} | {today.text()} ({today.n}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="the earlier release's study directory (its final.csv)")
    parser.add_argument("now", type=Path, help="today's study directory")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    rows = compare(read_final(args.first), read_final(args.now))
    if not rows:
        print(f"releases: no cell of {args.first} has runs on new instances in {args.now}", file=sys.stderr)
        return 1
    text = markdown(rows, str(args.first), str(args.now))
    print(text, end="")
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
