"""How a quality run's detectors would combine under other rules than the hybrid's sum.

Reads what ``benchmarks/quality.py`` stored (each system's scores, and the hybrid's per-section
normalisers from its references): every detector's test scores standardised by its training
clips' scores, then combined by each rule; prints the official score and per machine type.

    python benchmarks/hybrid_rules.py --run /tmp/qs/tune/scores/final12      # choose here
    python benchmarks/hybrid_rules.py --run /tmp/qs/confirm/scores/final12 --rules sum "sum of log1p(max(z, 0))"
"""

import argparse

import numpy as np
from scipy.special import logsumexp

from asd_ray import metrics, storage
from asd_ray.references import References
from asd_ray.score import read_scores

# quality.py's systems by folder: the dual-stream model alone, the hybrid's autoencoder term, the
# frame statistics, the line alarms, and the hybrid of the four (whose references hold the normalisers,
# in that order); a run from before the pooled covariance (up to the twenty-sixth session), whose
# hybrid had the comparator's autoencoder score (folder 2); a run from before the line alarms (up to
# the thirteenth session): the first three and the hybrid of those
LAYOUTS = ((("0", "8", "3", "4"), "7"), (("0", "2", "3", "4"), "7"), (("0", "2", "3"), "5"))
RULES = {
    "sum": lambda z: z.sum(0),
    "sum of max(z, 0)": lambda z: np.maximum(z, 0).sum(0),
    "sum of max(z, -1)": lambda z: np.maximum(z, -1).sum(0),
    "max": lambda z: z.max(0),
    "sum + max": lambda z: z.sum(0) + z.max(0),  # the sum, with the most confident detector counted twice
    "sum of max(z, 0) + max": lambda z: np.maximum(z, 0).sum(0) + z.max(0),
    "sum of the top 2": lambda z: np.sort(z, 0)[1:].sum(0),
    "log-sum-exp": lambda z: logsumexp(z, axis=0),  # scipy's: z can be large enough to overflow exp
    "sum of log1p(max(z, 0))": lambda z: np.log1p(np.maximum(z, 0)).sum(0),
    "sum of sqrt(max(z, 0))": lambda z: np.sqrt(np.maximum(z, 0)).sum(0),
    "sum of max(z, 0)^2": lambda z: (np.maximum(z, 0) ** 2).sum(0),
}


def standardised(run: str) -> tuple[dict, np.ndarray]:
    """The test clips' table and every detector's standardised scores ``(detectors, clips)``: the
    dual-stream model, the autoencoder, the frame statistics (and the line alarms)."""
    detectors, hybrid = next(((d, h) for d, h in LAYOUTS
                              if all(storage.exists(storage.join(run, f, "manifest.json")) for f in (*d, h))),
                             LAYOUTS[0])
    tables = [read_scores(storage.join(run, d)).to_pydict() for d in detectors]
    if any(t["clip_id"] != tables[0]["clip_id"] for t in tables):
        raise ValueError(f"{run}: the systems scored different clips")
    norms = References.from_bytes(storage.read_bytes(storage.join(run, hybrid, "references.npz"))).meta["norms"]
    keys = [f"{m}|{s}" for m, s in zip(tables[0]["machine"], tables[0]["section"])]
    if len(norms[keys[0]]) != len(detectors):  # the hybrid's k-th normaliser must be the k-th detector's
        raise ValueError(f"{run}: its hybrid has {len(norms[keys[0]])} models, not the {len(detectors)} detectors "
                         f"read here (an ensemble run?); the screens read runs of one model per detector")
    z = np.array([[(score - norms[key][k][0]) / norms[key][k][1] for score, key in zip(t["score"], keys)]
                  for k, t in enumerate(tables)])
    return tables[0], z


def evaluate(table: dict, score: np.ndarray) -> tuple[float, dict[str, float]]:
    rows = []
    machines, sections = np.array(table["machine"]), np.array(table["section"])
    labels = np.array([label == "anomaly" for label in table["label"]], int)
    for machine, section in sorted(set(zip(table["machine"], table["section"]))):
        at = (machines == machine) & (sections == section)
        rows.append({"machine": machine, **metrics.section_metrics(labels[at], np.array(table["domain"])[at],
                                                                   score[at], machine, section)})
    per = {m: metrics.official_score([r for r in rows if r["machine"] == m]) for m in sorted(set(machines))}
    return metrics.official_score(rows), per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a quality.py run's scores folder: <out>/scores/<name>")
    p.add_argument("--rules", nargs="*", default=list(RULES), choices=list(RULES))
    args = p.parse_args()
    table, z = standardised(args.run)
    for name in args.rules:
        overall, per = evaluate(table, RULES[name](z))
        print(f"| {name} | {100 * overall:.2f} | " + " | ".join(f"{m} {100 * v:.2f}" for m, v in per.items()) + " |")


if __name__ == "__main__":
    main()
