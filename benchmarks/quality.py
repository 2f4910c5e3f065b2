"""Quality on a suite of the synthetic world: every system trained, scored and evaluated through
the same jobs users run (``asd-ray train``, ``asd-ray score``, ``asd-ray evaluate``).

    python benchmarks/quality.py --suite tune       # choose settings here
    python benchmarks/quality.py --suite confirm    # then confirm them here (never choose on it)
    python benchmarks/quality.py --suite tune --clip-seconds 5 --train-clips 150 --ae-epochs 30 --batch-size 32
    python benchmarks/quality.py --suite tune --difficulty 0.8 --out /tmp/qs/tune-hard ...   # weaker faults
    python benchmarks/quality.py ... --name scadacos-mix1 --set mixup_alpha=1.0 featex=0.5   # a variant

One ``asd-ray train`` job as users run it trains the dual-stream model and its companion, the
DCASE autoencoder baseline (a model per machine type), and saves the frame-statistics detector
(nothing to train). Systems scored: the dual-stream model alone (``companions=false``); the
autoencoder by MSE and by Mahalanobis distance, as the official baseline scores it (the
comparator); the frame statistics alone; the line alarms alone; the dual-stream model and the
autoencoder; the same with the frame statistics; the hybrid, the default (all four detectors'
scores, each normalised per machine and section, added); the hybrid's autoencoder term alone
(its Mahalanobis distance with the covariance pooled over the domains). Prints per machine type AUC
(source), AUC (target), pAUC and the official score, per fault family AUC (source) / AUC (target),
and each system's official score minus the stronger autoencoder score. Re-running with the same
--out reuses the data and the trained runs (the jobs' own resume).
"""

import argparse
import time

from sklearn.metrics import roc_auc_score

from asd_ray import storage
from asd_ray.bundle import AUTOENCODER_COMPANION, FRAMESTATS_COMPANION, TONAL_COMPANION
from asd_ray.cluster import ensure_ray
from asd_ray.config import load_config
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.score import ScoreConfig, read_scores, run_score
from asd_ray.synth.generate import SUITES, Counts, SynthConfig, fault_of, synthesize
from asd_ray.synth.machines import MACHINES
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
    p.add_argument("--difficulty", type=float, default=SynthConfig.model_fields["difficulty"].default,
                   help="the faults' difficulty, 0 (obvious) to 1 (barely there). A suite whose systems all score "
                        "near 100 says nothing about a choice: run it harder")
    p.add_argument("--hidden-attributes", action="store_true",
                   help="synthesize the clips without attribute names (noAttribute), as DCASE 2024/2025 do for "
                        "several machine types")
    p.add_argument("--epochs", type=int, default=6, help="dual-stream epochs")
    p.add_argument("--ae-epochs", type=int, default=30, help="autoencoder epochs (asd-ray train's default)")
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
        s = synthesize(SynthConfig(out=data, clip_seconds=args.clip_seconds, counts=counts,
                                   machines=list(suite.machines), seed=suite.seed,
                                   named_attributes=not args.hidden_attributes, difficulty=args.difficulty))
        print(f"synthesized {s['clips']} clips in {s['seconds']} s")
    common = dict(data=data, storage_path=storage.join(args.out, "runs"), clip_seconds=args.clip_seconds,
                  num_workers=args.workers, use_gpu=args.gpu, batch_size=args.batch_size)
    # one training job, as users run it: the dual-stream model and its companion autoencoder
    cfg = load_config(TrainConfig, None, args.set, name=args.name, epochs=args.epochs,
                      autoencoder_epochs=args.ae_epochs, **common)
    t0 = time.time()
    main = train(cfg)["bundle"]
    seconds = {f"train {cfg.name} (with its autoencoder)": time.time() - t0}
    ae, frames, tonal = (storage.join(main, c) for c in (AUTOENCODER_COMPANION, FRAMESTATS_COMPANION, TONAL_COMPANION))
    systems = {  # label: scoring settings (benchmarks/hybrid_rules.py reads the folders by this order)
        "dual-stream SCAdaCos": dict(bundle=main, companions=False),
        "autoencoder (MSE)": dict(bundle=ae, autoencoder_score="mse"),
        "autoencoder (Mahalanobis)": dict(bundle=ae, autoencoder_score="mahalanobis", autoencoder_covariance="domain"),
        "frame statistics (kNN)": dict(bundle=frames),
        "line alarms": dict(bundle=tonal),
        "dual-stream + autoencoder (Mahalanobis)": dict(bundle=main, companions=False, add_bundles=[ae]),
        "dual-stream + autoencoder (Mahalanobis) + frame statistics": dict(bundle=main, companions=False,
                                                                          add_bundles=[ae, frames]),
        "hybrid (default): dual-stream + autoencoder (Mahalanobis) + frame statistics + line alarms":
            dict(bundle=main),
        # the hybrid's own autoencoder term; not a baseline: its name does not start with "autoencoder"
        "the hybrid's autoencoder term alone (Mahalanobis, pooled covariance)": dict(bundle=ae),
    }
    results, tables = {}, {}
    for i, (label, fields) in enumerate(systems.items()):
        t0 = time.time()
        out = storage.join(args.out, "scores", args.name, str(i))
        run_score(ScoreConfig(data=data, batch_size=args.batch_size, use_gpu=args.gpu, references=args.references,
                              out=out, references_to=storage.join(out, "references.npz"), **fields))
        results[label] = run_evaluate(EvaluateConfig(scores=out))
        tables[label] = read_scores(out)
        seconds[f"score {label}"] = time.time() - t0
    report(args, data, results, tables, seconds)


def fault_aucs(table) -> dict[tuple[str, str], tuple[float, float]]:
    """Per (machine, fault family): AUC (source) and AUC (target) of that fault's clips against the
    normal clips of their section and domain (the generator names a clip's fault by its index)."""
    d = table.to_pydict()
    faults = [fault_of(m, c) if lab == "anomaly" else "" for m, c, lab in zip(d["machine"], d["clip_id"], d["label"])]
    out = {}
    for machine in sorted(set(d["machine"])):
        for fault in MACHINES[machine].anomalies:
            aucs = []
            for domain in ("source", "target"):
                rows = [i for i in range(len(faults)) if d["machine"][i] == machine and d["domain"][i] == domain
                        and faults[i] in ("", fault)]
                aucs.append(roc_auc_score([faults[i] == fault for i in rows], [d["score"][i] for i in rows]))
            out[(machine, fault)] = tuple(aucs)
    return out


def report(args, data: str, results: dict, tables: dict, seconds: dict) -> None:
    per = {label: per_machine(r) for label, r in results.items()}
    baselines = [label for label in results if label.startswith("autoencoder")]
    print(f"\nquality on {data} (suite {args.suite}, {args.clip_seconds:g} s clips); metrics in %")
    print("| machine | system | AUC source | AUC target | pAUC | official (h-mean) |")
    print("|---|---|---|---|---|---|")
    machines = list(next(iter(per.values())))
    for m in machines:
        for label, table in per.items():
            r = table[m]
            print(f"| {m} | {label} | {100 * r['auc_source']:.2f} | {100 * r['auc_target']:.2f} | "
                  f"{100 * r['pauc']:.2f} | {100 * r['official']:.2f} |")
    for label in per:
        print(f"| all | {label} | | | | {100 * results[label]['official_score']:.2f} |")
    print("\nper fault family, AUC source / AUC target:")
    faults = {label: fault_aucs(t) for label, t in tables.items()}
    print("| machine | fault | " + " | ".join(faults) + " |")
    print("|---|---|" + "---|" * len(faults))
    for key in next(iter(faults.values())):
        print(f"| {key[0]} | {key[1]} | " + " | ".join(f"{100 * f[key][0]:.0f} / {100 * f[key][1]:.0f}"
                                                        for f in faults.values()) + " |")
    best = {m: max(per[b][m]["official"] for b in baselines) for m in machines}
    best_all = max(results[b]["official_score"] for b in baselines)
    print("\nofficial score minus the stronger autoencoder score (all; per machine type):")
    for label in per:
        if label not in baselines:
            print(f"- {label}: {100 * (results[label]['official_score'] - best_all):+.2f}; " + ", ".join(
                f"{m} {100 * (per[label][m]['official'] - best[m]):+.2f}" for m in machines))
    print("time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
