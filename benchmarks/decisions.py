"""How many test clips each system decides anomalous, normal and anomalous ones and the two domains
apart: thresholds are the only thing AUC and pAUC never see. Scores a model trained by ``benchmarks/quality.py``
(the dual-stream model alone, its companion autoencoder alone, the hybrid default).

    python benchmarks/decisions.py --data runs/quality-tune/data --bundle runs/quality-tune/runs/scadacos/model
"""

import argparse

import numpy as np

from asd_ray import storage
from asd_ray.bundle import AUTOENCODER_COMPANION
from asd_ray.cluster import ensure_ray
from asd_ray.score import ScoreConfig, read_scores, run_score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a labelled clip dataset")
    p.add_argument("--bundle", required=True, help="a dual-stream bundle trained with its companion autoencoder")
    p.add_argument("--out", default="runs/decisions")
    a = p.parse_args()
    ensure_ray()
    systems = {"dual-stream alone": dict(bundle=a.bundle, companions=False),
               "autoencoder (Mahalanobis) alone": dict(bundle=storage.join(a.bundle, AUTOENCODER_COMPANION)),
               "hybrid (default)": dict(bundle=a.bundle)}
    rows = []
    for k, (name, fields) in enumerate(systems.items()):
        out = storage.join(a.out, str(k))
        run_score(ScoreConfig(data=a.data, out=out, batch_size=32, references_to=storage.join(out, "refs.npz"),
                              **fields))
        t = read_scores(out)
        label, domain = np.array(t["label"].to_pylist()), np.array(t["domain"].to_pylist())
        decision = t["decision"].to_numpy()
        rows.append(f"| {name} | " + " | ".join(f"{100 * decision[(label == lab) & (domain == dom)].mean():.1f} %"
                                              for lab in ("normal", "anomaly") for dom in ("source", "target")) + " |")
    print("\n| system | normal, source | normal, target | anomalous, source | anomalous, target |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
