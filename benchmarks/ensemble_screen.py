"""Screen ensembles of trainings on stored quality runs, without a job: each trained detector's
standardised test scores (the dual-stream model's, the autoencoder's) averaged over several
``benchmarks/quality.py`` runs of one suite, added to the newest run's untrained detectors (the
frame statistics, the line alarms) as the hybrid adds them.

Prints each run's comparator (the autoencoder as the official baseline scores it), each run's
hybrid (its own trained models), the hybrid with one detector averaged over the runs and the
other the run's own, the averaged hybrid (what ``ensemble=N`` does with the dual-stream model),
and the hybrid with the dual-stream runs as separate terms (what it did before the twenty-ninth
session).

    python benchmarks/ensemble_screen.py --out /tmp/qs/tune --runs final12 final13 final14   # the newest last
"""

import argparse

import numpy as np

from asd_ray.score import read_scores
from framestats_screen import official
from hybrid_rules import standardised

COMPARATOR = "2"  # quality.py's folder of the autoencoder scored as the official baseline (Mahalanobis, domain)


def aligned(out: str, runs: list[str]) -> tuple[dict, list[np.ndarray]]:
    """The newest run's test table, and every run's standardised scores in its clip order."""
    table, _ = standardised(f"{out}/scores/{runs[-1]}")
    order = {clip: i for i, clip in enumerate(table["clip_id"])}
    zs = []
    for run in runs:
        other, z = standardised(f"{out}/scores/{run}")
        at = np.empty(len(order), int)
        at[[order[clip] for clip in other["clip_id"]]] = np.arange(len(order))
        zs.append(z[:, at])
    return table, zs


def comparator(out: str, run: str, table: dict) -> np.ndarray:
    """A run's comparator scores in ``table``'s clip order."""
    other = read_scores(f"{out}/scores/{run}/{COMPARATOR}").to_pydict()
    by_clip = dict(zip(other["clip_id"], other["score"]))
    return np.array([by_clip[clip] for clip in table["clip_id"]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder")
    p.add_argument("--runs", nargs="+", required=True, help="quality runs of that folder, the newest (with the line "
                   "alarms) last")
    args = p.parse_args()
    table, zs = aligned(args.out, args.runs)
    dual, auto = np.stack([z[0] for z in zs]), np.stack([z[1] for z in zs])
    untrained = zs[-1][2] + zs[-1][3]  # the newest run's frame statistics and line alarms
    for name, scores in (("dual-stream", dual), ("autoencoder (Mahalanobis)", auto)):
        print(f"{name} alone: " + ", ".join(f"{r} {official(table, s).split(' (')[0]}" for r, s in
                                            zip(args.runs, scores)) + f"; averaged {official(table, scores.mean(0))}")
    for run in args.runs:
        print(f"comparator of {run}: {official(table, comparator(args.out, run, table))}")
    for run, d, a in zip(args.runs, dual, auto):
        print(f"hybrid with {run}'s trained models: {official(table, d + a + untrained)}")
    for run, d, a in zip(args.runs, dual, auto):
        print(f"hybrid with {run}'s dual-stream model, the autoencoder averaged over the runs: "
              f"{official(table, d + auto.mean(0) + untrained)}")
        print(f"hybrid with {run}'s dual-stream model, the autoencoder runs as separate terms: "
              f"{official(table, d + auto.sum(0) + untrained)}")
        print(f"hybrid with {run}'s autoencoder, the dual-stream model averaged over the runs: "
              f"{official(table, dual.mean(0) + a + untrained)}")
    print(f"hybrid, both averaged over the runs: {official(table, dual.mean(0) + auto.mean(0) + untrained)}")
    print(f"hybrid, the dual-stream runs as separate terms, {args.runs[-1]}'s autoencoder: "
          f"{official(table, dual.sum(0) + auto[-1] + untrained)}")


if __name__ == "__main__":
    main()
