"""Screen the autoencoder's Mahalanobis covariance on a quality run: each domain's own (the official
baseline's) or one per section pooled over the domains' deviations from their own means.

The run's autoencoder embeds the suite's clips as ``asd-ray score``'s actors do; its references are
fitted both ways (``asd-ray score``'s ``autoencoder_covariance``), standardised by the section's
training-clip scores, and put in the place of the autoencoder's term among the run's stored
standardised scores of the other three detectors. Prints the autoencoder alone and the hybrid.

    python benchmarks/ae_covariance_screen.py --out /tmp/qs/tune6-hard --run final22    # choose here
"""

import argparse
from functools import partial

from asd_ray import storage
from asd_ray.references import mahalanobis_references

from framestats_screen import detector_z, official, suite
from hybrid_norms import embeddings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/, runs/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run (--name) whose models to use")
    args = p.parse_args()
    train, train_audio, test, test_audio, table, z = suite(args.out, args.run)
    url = [storage.join(args.out, "runs", args.run, "model", "autoencoder")]
    (train_x,), (test_x,) = embeddings(url, train, train_audio), embeddings(url, test, test_audio)
    print(f"stored: autoencoder alone {official(table, z[1])}; hybrid {official(table, z.sum(0))}")
    for covariance in ("domain", "pooled"):
        _, ae = detector_z(train, train_x, test, test_x, fit=partial(mahalanobis_references,
                                                                     pooled=covariance == "pooled"))
        print(f"{covariance}: autoencoder alone {official(table, ae)}; "
              f"hybrid {official(table, z[0] + ae + z[2] + z[3])}", flush=True)


if __name__ == "__main__":
    main()
