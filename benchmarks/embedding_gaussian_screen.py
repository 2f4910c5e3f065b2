"""Screen a nearest-neighbour term's references on a quality run: its nearest neighbours (as
``asd-ray score`` fits them), or a Gaussian per domain as the autoencoder's term has, its
covariance pooled over the domains or each domain's own.

The run's model (the dual-stream model, or the frame statistics) embeds the suite's clips as
``asd-ray score``'s actors do; the references are fitted each way, standardised by the section's
training-clip scores (out of sample), and put in the place of that detector's term among the run's
stored standardised scores of the other three. Prints the term alone and the hybrid. The first
row refits ``asd-ray score``'s own references, so it reproduces the stored run.

    python benchmarks/embedding_gaussian_screen.py --out /tmp/qs/tune6-hard --run final28    # choose here
    python benchmarks/embedding_gaussian_screen.py --out /tmp/qs/tune6-hard --run final28 --detector "frame statistics"
"""

import argparse
from functools import partial

import numpy as np

from asd_ray import storage
from asd_ray.references import mahalanobis_references

from framestats_screen import detector_z, official, suite
from hybrid_norms import DETECTORS, embeddings


def padded(x: np.ndarray) -> np.ndarray:
    """``mahalanobis_references`` and its scores read a vector's first number as the autoencoder's MSE
    and skip it: a zero in front of each vector."""
    return np.concatenate([np.zeros((len(x), 1), x.dtype), x], axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/, runs/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run (--name) whose models to use")
    p.add_argument("--detector", choices=["dual-stream", "frame statistics"], default="dual-stream")
    args = p.parse_args()
    train, train_audio, test, test_audio, table, z = suite(args.out, args.run)
    term = list(DETECTORS).index(args.detector)  # its row in z
    folder, own_fit = DETECTORS[args.detector]
    model = storage.join(args.out, "runs", args.run, "model")
    url = [model if folder is None else storage.join(model, folder)]
    (train_x,), (test_x,) = embeddings(url, train, train_audio), embeddings(url, test, test_audio)
    others = z.sum(0) - z[term]
    print(f"stored: {args.detector} alone {official(table, z[term])}; hybrid {official(table, z.sum(0))}")
    fits = {"as asd-ray score fits it": (own_fit, lambda x: x),
            "gaussian, pooled covariance": (partial(mahalanobis_references, pooled=True), padded),
            "gaussian, each domain's covariance": (partial(mahalanobis_references, pooled=False), padded)}
    for name, (fit, form) in fits.items():
        _, mine = detector_z(train, form(train_x), test, form(test_x), fit=fit)
        print(f"{name}: {args.detector} alone {official(table, mine)}; hybrid {official(table, others + mine)}",
              flush=True)


if __name__ == "__main__":
    main()
