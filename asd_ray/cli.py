"""The ``asd-ray`` command: one subcommand per job, each ``[--config FILE] [key=value ...]``."""

from __future__ import annotations

import argparse
import sys

from asd_ray.config import ConfigError, dump_config, load_config


def _synth(args: argparse.Namespace) -> int:
    from asd_ray.synth.generate import SynthConfig, synthesize

    cfg = _load(args, SynthConfig, out=args.out)
    if cfg is None:
        return 0
    summary = synthesize(cfg)
    print(f"wrote {summary['clips']} clips in {summary['files']} files to {summary['out']} "
          f"in {summary['seconds']} s")
    for key, n in summary["counts"].items():
        print(f"  {key:45s} {n:6d}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from asd_ray.ingest import IngestConfig, ingest

    cfg = _load(args, IngestConfig, src=args.src, dest=args.dest)
    if cfg is None:
        return 0
    summary = ingest(cfg)
    print(f"ingested {summary['clips']} clips into {summary['shards']} shards at {summary['dest']}; "
          f"rejected {summary['rejected']} files (listed in {summary['rejects_file']})")
    for path, reason in summary["rejects"]:
        print(f"  rejected {path}: {reason}")
    return 1 if summary["rejected"] else 0


def _train(args: argparse.Namespace) -> int:
    from asd_ray.train import TrainConfig, summary_text, train

    cfg = _load(args, TrainConfig)
    if cfg is None:
        return 0
    print(summary_text(train(cfg)))
    return 0


def _score(args: argparse.Namespace) -> int:
    from asd_ray.score import ScoreConfig, run_score

    cfg = _load(args, ScoreConfig)
    if cfg is None:
        return 0
    summary = run_score(cfg)
    print(f"scored {summary['scored']} clips ({', '.join(summary['groups'])}) into {summary['out']}")
    for clip, reason in summary["unscored_examples"]:
        print(f"  not scored: {clip}: {reason}")
    if summary["unscored"] > len(summary["unscored_examples"]):
        print(f"  ... {summary['unscored']} clips not scored in all: see {summary['out']}/unscored.csv")
    return 1 if summary["unscored"] else 0


def _evaluate(args: argparse.Namespace) -> int:
    from asd_ray.evaluate import EvaluateConfig, run_evaluate

    cfg = _load(args, EvaluateConfig, scores=args.scores, ray=False)
    if cfg is None:
        return 0
    result = run_evaluate(cfg)
    print(result["markdown"])
    print(f"official score {100 * result['official_score']:.2f}; report at {result['report']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from asd_ray.demo import DemoConfig, run_demo

    cfg = _load(args, DemoConfig, show=lambda c: c.resolved())
    if cfg is None:
        return 0
    result = run_demo(cfg)
    ev = result["evaluation"]
    print()
    print(ev["markdown"])
    print(f"demo finished in {result['seconds'] / 60:.1f} min: official score {100 * ev['official_score']:.2f}")
    print(f"report: {ev['report']}  (scores and DCASE files in {result['score']['out']})")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from asd_ray.sweep import SweepConfig, run_sweep

    cfg = _load(args, SweepConfig)
    if cfg is None:
        return 0
    result = run_sweep(cfg)
    print(result["markdown"])
    print(f"best {result['metric']} {result['best']:.4f} with {result['best_params']}")
    print(f"best training config: {result['best_config']}  (asd-ray train --config <it>)")
    print(f"results: {result['results_csv']}, plot: {result['plot']}")
    return 1 if result["errors"] else 0


def _load(args: argparse.Namespace, model, show=None, ray: bool = True, **fields):
    """The command's config; with --print-config it is printed and None returned. Otherwise Ray is
    joined or started (for commands that use it)."""
    cfg = load_config(model, args.config, args.overrides, **fields)
    if args.print_config:
        print(dump_config(show(cfg) if show else cfg))
        return None
    if ray:
        from asd_ray.cluster import ensure_ray

        ensure_ray()
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asd-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str, *args: tuple[str, str]) -> None:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        for arg, arg_help in args:
            p.add_argument(arg, help=arg_help)
        p.add_argument("--config", help="YAML or JSON config file")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. counts.test_normal=10")

    command("demo", _demo, "synthesize, train, score, evaluate and report on local defaults")
    command("synth", _synth, "generate a DCASE-like synthetic dataset",
            ("--out", "dataset URL (local path, file://, s3://, ...)"))
    command("ingest", _ingest, "convert DCASE folders of WAV files to clip shards",
            ("src", "URL of the DCASE folder (<machine>/train|test/*.wav)"),
            ("dest", "URL of the clip dataset to write"))
    command("train", _train, "train the dual-stream model with Ray Train (resumes a run of the same name)")
    command("tune", _tune, "search training hyperparameters with Ray Tune (resumes a sweep of the same name)")
    command("score", _score, "fit references and score a test set with Ray Data; write DCASE submission files")
    command("evaluate", _evaluate, "official DCASE metrics, tables and report of a scoring output",
            ("--scores", "URL of a scoring output (default runs/score)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"asd-ray {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
