"""Screen weights per detector in the hybrid, set per section from its normal training clips alone (no labels).

The hybrid adds its four detectors' standardised scores with equal weights. Each rule here sets a
section's weights, or a transform of each score, from its detectors' standardised training-clip
scores (out of sample, as ``asd-ray score`` normalises them):

- ``sum``: equal weights (``asd-ray score``'s hybrid).
- ``min variance``: the non-negative weights, summing to 1, whose sum has the least variance over
  the section's normal clips (``w = C^-1 1`` on the detectors it keeps): what is redundant counts less.
- ``inverse redundancy``: each detector's weight 1 / the sum of its absolute correlations with all four.
- ``whitened sum``: ``1' C^(-1/2) z``, the sum of the decorrelated scores.
- ``Mahalanobis``: ``z' C^-1 z`` over the four standardised scores (two-sided).
- ``Fisher, ...``: the sum of ``-log p`` over the detectors, ``p`` a score's tail probability among
  the section's normal training scores (Fisher's rule for independent tests): empirical, at most
  ``log(n + 1)`` per detector; or beyond the 90th / 75th percentile an exponential fitted to the
  excesses over it, unbounded.

Prints each section's correlations of the four detectors over its normal clips, then the official
score of the hybrid under each rule (and per machine type).

    python benchmarks/hybrid_weights.py --out /tmp/qs/tune6-hard --run final22    # choose here
    python benchmarks/hybrid_weights.py --out /tmp/qs/confirm --run final22 --rules sum "Fisher, empirical p"
"""

import argparse
import itertools

import numpy as np

from asd_ray import storage
from asd_ray.references import group_embeddings, section_clips
from asd_ray.reference_fit import section_norm

from framestats_screen import official, suite
from hybrid_norms import DETECTORS, embeddings


def min_variance(cov: np.ndarray) -> np.ndarray:
    """argmin w'Cw subject to sum(w) = 1, w >= 0: the best of the closed forms over the detector subsets."""
    best, best_var = None, np.inf
    for size in range(1, len(cov) + 1):
        for keep in map(list, itertools.combinations(range(len(cov)), size)):
            w = np.linalg.solve(cov[np.ix_(keep, keep)], np.ones(size))
            if w.sum() <= 0 or (w < 0).any():
                continue
            w = w / w.sum()
            var = w @ cov[np.ix_(keep, keep)] @ w
            if var < best_var:
                best, best_var = np.zeros(len(cov)), var
                best[keep] = w
    return best


def inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return vectors @ np.diag(1 / np.sqrt(np.maximum(values, 1e-6))) @ vectors.T


def correlations(cov: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def fisher(train: np.ndarray, test: np.ndarray, tail: float | None) -> np.ndarray:
    """Fisher's sum of -log p over the detectors, each p a test score's tail probability among the
    section's normal training scores: empirical, and beyond the ``1 - tail`` quantile (if given) an
    exponential fitted to the training scores' excesses over it (peaks over a threshold)."""
    total = np.zeros(test.shape[1])
    for tr, te in zip(train, test):
        tr = np.sort(tr[np.isfinite(tr)])
        p = (len(tr) - np.searchsorted(tr, te, side="left") + 1) / (len(tr) + 1)
        if tail is not None:
            u = np.quantile(tr, 1 - tail)
            scale = max(np.mean(tr[tr > u] - u), 1e-9)
            p = np.where(te > u, tail * np.exp(-(te - u) / scale), p)
        total -= np.log(p)
    return total


def covariance(train: np.ndarray) -> np.ndarray:
    return np.cov(train[:, np.isfinite(train).all(0)])


RULES = {  # (training z, test z) -> test scores; z: (detectors, clips), the weights from the training z
    "sum": lambda tr, te: te.sum(0),
    "min variance": lambda tr, te: min_variance(covariance(tr)) @ te,
    "inverse redundancy": lambda tr, te: (1 / np.abs(correlations(covariance(tr))).sum(1)) @ te,
    "whitened sum": lambda tr, te: np.ones(len(te)) @ inverse_sqrt(covariance(tr)) @ te,
    "Mahalanobis": lambda tr, te: np.einsum("kn,kj,jn->n", te, np.linalg.inv(covariance(tr) + 1e-6 * np.eye(len(te))),
                                            te),
    "Fisher, empirical p": lambda tr, te: fisher(tr, te, None),
    "Fisher, exponential tail over the 90th percentile": lambda tr, te: fisher(tr, te, 0.1),
    "Fisher, exponential tail over the 75th percentile": lambda tr, te: fisher(tr, te, 0.25),
}


def section_z(train: dict, train_xs: list, test: dict, test_xs: list):
    """Per section: the detectors' standardised training-clip scores ``(detectors, clips)`` (out of
    sample) and the test clips' (``(detectors, clips)``, with the test clips' positions)."""
    sections = np.array([f"{m}|{s}" for m, s in zip(test["machine"], test["section"])])
    out = {}
    for (_, fit), train_x, test_x in zip(DETECTORS.values(), train_xs, test_xs):
        groups = group_embeddings(train_x, *(np.array(train[c]) for c in ("machine", "section", "domain")))
        refs = fit(groups)
        for key in refs.vectors:
            training = refs.training_scores(key, section_clips(groups, key))
            mean, std = section_norm(training)
            at = np.flatnonzero(sections == "|".join(key))
            tr, te = out.setdefault("|".join(key), ([], [], at))[:2]
            tr.append((training - mean) / std)
            te.append((refs.score(*key, test_x[at]) - mean) / std)
    return {key: (np.array(tr), np.array(te), at) for key, (tr, te, at) in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/, runs/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run (--name) whose four models to use")
    p.add_argument("--rules", nargs="*", default=list(RULES), choices=list(RULES))
    args = p.parse_args()
    train, train_audio, test, test_audio, table, _ = suite(args.out, args.run)
    model = storage.join(args.out, "runs", args.run, "model")
    urls = [model if folder is None else storage.join(model, folder) for folder, _ in DETECTORS.values()]
    per_section = section_z(train, embeddings(urls, train, train_audio), test, embeddings(urls, test, test_audio))
    for key, (tr, _, _) in sorted(per_section.items()):
        cov = covariance(tr)
        print(f"{key}: correlations of " + ", ".join(DETECTORS) + "\n" + np.array2string(correlations(cov), precision=2)
              + "\n  min-variance weights " + np.array2string(min_variance(cov), precision=2))
    print("| rule | hybrid |")
    for name in args.rules:
        score = np.zeros(len(test_audio))
        for tr, te, at in per_section.values():
            score[at] = RULES[name](tr, te)
        print(f"| {name} | {official(table, score)} |", flush=True)


if __name__ == "__main__":
    main()
