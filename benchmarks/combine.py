"""Score a quality run's data with a combination of its trained models: an ensemble (several
dual-stream runs), a hybrid (a dual-stream run and the autoencoder), or any other, through
``asd-ray score add_bundles=[...]`` (each model's score normalised per machine and section by its
training clips' scores, then added).

    python benchmarks/quality.py --suite tune --out /tmp/q --name seed1 --set seed=1   # train members
    python benchmarks/combine.py --out /tmp/q --runs scadacos seed1 seed2              # an ensemble of three
    python benchmarks/combine.py --out /tmp/q --runs scadacos ae-per-machine           # the hybrid

Prints the official score and per machine type AUC (source), AUC (target), pAUC and their
harmonic mean, as ``quality.py`` does.
"""

import argparse

from asd_ray import storage
from asd_ray.cluster import ensure_ray
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.score import ScoreConfig, run_score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the --out of a benchmarks/quality.py run")
    p.add_argument("--runs", nargs="+", required=True, help="run names under <out>/runs; the first is the main model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="score config overrides")
    args = p.parse_args()
    ensure_ray()
    bundles = [storage.join(args.out, "runs", name, "model") for name in args.runs]
    out = storage.join(args.out, "scores", "combined-" + "+".join(args.runs))
    fields = dict(kv.split("=", 1) for kv in args.set)
    cfg = ScoreConfig.model_validate({"bundle": bundles[0], "add_bundles": bundles[1:],
                                      "data": storage.join(args.out, "data"), "out": out,
                                      "batch_size": args.batch_size,
                                      "references_to": storage.join(out, "references.npz"), **fields})
    run_score(cfg)
    result = run_evaluate(EvaluateConfig(scores=out))
    print(f"\n{' + '.join(args.runs)}: official score {100 * result['official_score']:.2f}")
    for m, means in result["machine_means"].items():
        print(f"| {m} | {100 * means['mean_auc_source']:.2f} | {100 * means['mean_auc_target']:.2f} | "
              f"{100 * means['mean_pauc']:.2f} | {100 * result['per_machine'][m]:.2f} |")


if __name__ == "__main__":
    main()
