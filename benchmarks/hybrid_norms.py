"""Screen the hybrid's normaliser on a quality run's data: per section (``asd-ray score``'s) or per domain.

Every clip of the suite embedded by the run's four models (the dual-stream model, the
autoencoder, the frame statistics, the line alarms), references fitted as ``asd-ray score`` fits
them, and each detector's test scores standardised under each normaliser, then added as the
hybrid adds them. Prints the official score of the hybrid (and per machine type) and of each
detector's standardised score alone. The ``section`` row is ``asd-ray score``'s own hybrid.

- ``section``: the mean and standard deviation of the section's training-clip scores (out of sample).
- ``nearest domain``: those of the training clips of the domain whose reference is nearest to the clip
  (a test clip has no domain of its own to go by).
- ``min over domains``: each domain's distance standardised by its own clips' distances to their own
  domain (out of sample), the smallest over the domains.
- ``log``: the section's, on the logarithm of the scores.
- ``median / MAD``: the section's median and scaled median absolute deviation.
- ``source only``: the section's source-domain training clips.

    python benchmarks/hybrid_norms.py --out /tmp/qs/tune-hard --run final14    # choose here
    python benchmarks/hybrid_norms.py --out /tmp/qs/confirm --run final14 --norms "nearest domain"
"""

import argparse
from functools import partial

import numpy as np

from asd_ray import storage
from asd_ray.references import (References, alarm_references, alarms, cross_fitted_mahalanobis, group_embeddings,
                                knn_references, leave_one_out_rises, mahalanobis, mahalanobis_references, nearest,
                                section_clips)
from asd_ray.embedder import Embedder, embedding_column
from asd_ray.reference_fit import section_norm

from framestats_screen import official, suite

DETECTORS = {  # quality.py's hybrid, in its order: companion folder and how asd-ray score fits its references
    "dual-stream": (None, knn_references),
    "autoencoder": ("autoencoder", partial(mahalanobis_references, pooled=True)),
    "frame statistics": ("framestats", lambda groups: knn_references(groups, standardise=True)),
    "line alarms": ("tonal", alarm_references),
}
NORMS = ("section", "nearest domain", "min over domains", "log", "median / MAD", "source only")


def robust(scores: np.ndarray) -> tuple[float, float]:
    finite = scores[np.isfinite(scores)]
    median = np.median(finite)
    return float(median), float(1.4826 * np.median(np.abs(finite - median)) + 1e-12)


def log_norm(scores: np.ndarray) -> tuple[float, float]:
    return section_norm(np.log(np.maximum(scores, 1e-9)))


def domain_scores(refs: References, key, x: np.ndarray, domain: str) -> np.ndarray:
    """Scores of ``x`` against the references of one domain only."""
    at = refs.domains[key] == domain
    if refs.precisions is not None:
        return mahalanobis(x[:, 1:], refs.vectors[key][at], refs.precisions[key][at])
    if refs.meta.get("method") == "alarm":
        return alarms(refs.standardised(key, x), refs.vectors[key][at], refs.scales[key][at])
    return nearest(refs.standardised(key, x), refs.vectors[key][at], refs.scales[key][at],
                   euclidean=refs.standard is not None)


def own_domain_scores(refs: References, key, x: np.ndarray, domain: str) -> np.ndarray:
    """A domain's training clips ``x`` against their own domain's references, each left out of them (the
    autoencoder: a Gaussian of their own, its covariance not pooled)."""
    at = refs.domains[key] == domain
    if refs.precisions is not None:
        return cross_fitted_mahalanobis([x[:, 1:].astype(np.float64)], 0, folds=5)
    z = refs.standardised(key, x)
    if refs.meta.get("method") == "alarm":
        return leave_one_out_rises(z) / refs.scales[key][at][0]
    return nearest(z, refs.vectors[key][at], refs.scales[key][at], exclude=np.arange(len(z)),
                   euclidean=refs.standard is not None)


def standardised(fit, train: dict, train_x: np.ndarray, test: dict, test_x: np.ndarray) -> dict[str, np.ndarray]:
    """One detector's test scores standardised under each normaliser."""
    groups = group_embeddings(train_x, *(np.array(train[c]) for c in ("machine", "section", "domain")))
    refs = fit(groups)
    sections = np.array([f"{m}|{s}" for m, s in zip(test["machine"], test["section"])])
    z = {name: np.zeros(len(test_x)) for name in NORMS}
    for key in refs.vectors:
        at, x = sections == "|".join(key), test_x[sections == "|".join(key)]
        domains = sorted({d for m, s, d in groups if (m, s) == key})
        training = refs.training_scores(key, section_clips(groups, key))  # in section order: domains sorted
        training_domain = np.concatenate([[d] * len(groups[(*key, d)]) for d in domains])
        per_domain = np.array([domain_scores(refs, key, x, d) for d in domains])
        score, nearest_domain = per_domain.min(axis=0), np.array(domains)[per_domain.argmin(axis=0)]
        for name, norm in (("section", section_norm), ("log", log_norm), ("median / MAD", robust)):
            mean, std = norm(training)
            z[name][at] = ((np.log(np.maximum(score, 1e-9)) if name == "log" else score) - mean) / std
        mean, std = section_norm(training[training_domain == "source"])
        z["source only"][at] = (score - mean) / std
        by_domain = {d: section_norm(training[training_domain == d]) for d in domains}
        z["nearest domain"][at] = [(s - by_domain[d][0]) / by_domain[d][1] for s, d in zip(score, nearest_domain)]
        own = {d: section_norm(own_domain_scores(refs, key, groups[(*key, d)], d)) for d in domains}
        z["min over domains"][at] = np.min([(per_domain[i] - own[d][0]) / own[d][1]
                                            for i, d in enumerate(domains)], axis=0)
    return z



def embeddings(urls: list[str], meta: dict, audio: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """Every model's vectors of the clips, as ``asd-ray score``'s actors compute them."""
    embedder = Embedder(urls, {}, use_gpu=False)
    out = [embedder.embed({"audio": audio[a:a + batch], "machine": np.array(meta["machine"][a:a + batch])})
           for a in range(0, len(audio), batch)]
    return [np.concatenate([o[embedding_column(k)] for o in out]) for k in range(len(urls))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/, runs/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run (--name) whose four models to use")
    p.add_argument("--norms", nargs="*", default=list(NORMS), choices=NORMS)
    args = p.parse_args()
    train, train_audio, test, test_audio, table, _ = suite(args.out, args.run)
    model = storage.join(args.out, "runs", args.run, "model")
    urls = [model if folder is None else storage.join(model, folder) for folder, _ in DETECTORS.values()]
    train_x, test_x = embeddings(urls, train, train_audio), embeddings(urls, test, test_audio)
    z = [standardised(fit, train, tx, test, ex) for (_, fit), tx, ex in zip(DETECTORS.values(), train_x, test_x)]
    print("| normaliser | hybrid | " + " | ".join(f"{name} alone" for name in DETECTORS) + " |")
    for norm in args.norms:
        alone = [official(table, detector[norm]).split(" (")[0] for detector in z]
        print(f"| {norm} | {official(table, sum(d[norm] for d in z))} | " + " | ".join(alone) + " |", flush=True)


if __name__ == "__main__":
    main()
