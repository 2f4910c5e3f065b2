"""Quality: the dual-stream SCAdaCos system against the DCASE autoencoder baseline, both trained,
scored and evaluated through the same jobs on the same synthetic benchmark.

    python benchmarks/quality.py                                # the default synthetic benchmark (GPU-sized)
    python benchmarks/quality.py --clip-seconds 5 --train-clips 150 --ae-epochs 30 --batch-size 32   # a CPU-sized run
    python benchmarks/quality.py --gpu --workers 1
    python benchmarks/quality.py ... --name scadacos-mix1 --set mixup_alpha=1.0 featex=0.5   # a variant

Prints, per machine type, AUC (source), AUC (target), pAUC and the official score of both systems
and the difference of official scores. Re-running with the same --out reuses the data and resumes
or reuses the trained runs (the jobs' own resume).
"""

import argparse
import time


from asd_ray import storage
from asd_ray.cluster import ensure_ray
from asd_ray.config import load_config
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.score import ScoreConfig, run_score
from asd_ray.synth.generate import SUITES, Counts, SynthConfig, synthesize
from asd_ray.train import TrainConfig, train


def per_machine(evaluation: dict) -> dict[str, dict[str, float]]:
    """Per machine type: the evaluator's arithmetic means of AUC (source), AUC (target) and pAUC over
    sections, and asd_ray's harmonic mean of all of them ("hmean")."""
    return {m: {**{c: means[f"mean_{c}"] for c in ("auc_source", "auc_target", "pauc")},
                "official": evaluation["per_machine"][m]} for m, means in evaluation["machine_means"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="tune",
                   help="tune: settings may be chosen here; confirm: other machine types and physics, run only "
                        "to confirm a choice made on tune")
    p.add_argument("--out", default=None, help="default: runs/quality-<suite>")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--train-clips", type=int, default=None, help="source training clips per section "
                                                                   "(default: the synthetic default, 990)")
    p.add_argument("--hidden-attributes", action="store_true",
                   help="synthesize the clips without attribute names (noAttribute), as DCASE 2024/2025 do for "
                        "several machine types")
    p.add_argument("--epochs", type=int, default=6, help="dual-stream epochs")
    p.add_argument("--ae-epochs", type=int, default=50, help="autoencoder epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--references", default="knn", choices=["knn", "kmeans", "centroid"],
                   help="references of the dual-stream system")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--name", default="scadacos", help="run name of the dual-stream system (one per variant)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training config overrides of the dual-stream system, as for asd-ray train")
    args = p.parse_args()

    ensure_ray()
    suite = SUITES[args.suite]
    args.out = args.out or f"runs/quality-{args.suite}"
    data = storage.join(args.out, "data")
    counts = Counts() if args.train_clips is None else Counts(train_source=args.train_clips)
    if not storage.exists(storage.join(data, "_manifest.json")):
        s = synthesize(SynthConfig(out=data, clip_seconds=args.clip_seconds, counts=counts, machines=list(suite.machines),
                                   seed=suite.seed, named_attributes=not args.hidden_attributes))
        print(f"synthesized {s['clips']} clips in {s['seconds']} s")
    common = dict(data=data, storage_path=storage.join(args.out, "runs"), clip_seconds=args.clip_seconds,
                  num_workers=args.workers, use_gpu=args.gpu, batch_size=args.batch_size)
    systems = {"dual-stream SCAdaCos": load_config(TrainConfig, None, args.set, name=args.name, epochs=args.epochs,
                                                   **common),
               "autoencoder baseline": TrainConfig(name="autoencoder", method="autoencoder", epochs=args.ae_epochs,
                                                   mixup_alpha=0.0, **common)}
    results, seconds = {}, {}
    for label, cfg in systems.items():
        t0 = time.time()
        trained = train(cfg)
        out = storage.join(args.out, "scores", cfg.name)
        run_score(ScoreConfig(bundle=trained["bundle"], data=data, out=out, batch_size=args.batch_size,
                              use_gpu=args.gpu, references=args.references))
        results[label] = run_evaluate(EvaluateConfig(scores=out))
        seconds[label] = time.time() - t0

    ours, base = (per_machine(results[k]) for k in systems)
    print(f"\nquality on {data} ({args.clip_seconds:g} s clips); metrics in %")
    print("| machine | system | AUC source | AUC target | pAUC | h-mean of the three |")
    print("|---|---|---|---|---|---|")
    for m in ours:
        for label, table in zip(systems, (ours, base)):
            r = table[m]
            print(f"| {m} | {label} | {100 * r['auc_source']:.2f} | {100 * r['auc_target']:.2f} | "
                  f"{100 * r['pauc']:.2f} | {100 * r['official']:.2f} |")
    for label in systems:
        print(f"| all | {label} | | | | {100 * results[label]['official_score']:.2f} |")
    diff = {m: 100 * (ours[m]["official"] - base[m]["official"]) for m in ours}
    ours_label, base_label = systems
    total = 100 * (results[ours_label]["official_score"] - results[base_label]["official_score"])
    print(f"\nofficial score, SCAdaCos minus autoencoder: all {total:+.2f} points; per machine type (h-mean): "
          + ", ".join(f"{m} {d:+.2f}" for m, d in diff.items()))
    print("train + score + evaluate time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
