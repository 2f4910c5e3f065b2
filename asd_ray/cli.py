"""The ``asd-ray`` command: one subcommand per job, each ``[--config FILE] [key=value ...]``.

Exit codes: 0 done; 1 done, but some input was not used (clips not scored, files rejected, sweep
trials that failed: each named in the output); 2 bad input or config (the message names the file,
field or setting); 3 the job failed (the error in full).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from asd_ray import __version__, console, tracking
from asd_ray.config import ConfigError, dump_config, load_config

DONE, DONE_WITH_UNUSED_INPUT, BAD_INPUT, FAILED = 0, 1, 2, 3

EXAMPLES = {
    "demo": ["asd-ray demo", "asd-ray demo train.epochs=2 synth.clip_seconds=5"],
    "synth": ["asd-ray synth --out data/synth machines=[fan,pump] clip_seconds=10",
              "asd-ray synth --out s3://bucket/datasets/synth --config infra/configs/synth-s3.yaml"],
    "ingest": ["asd-ray ingest /data/dcase2023 data/dcase2023", "asd-ray ingest s3://raw/dcase s3://bucket/clips"],
    "train": ["asd-ray train data=data/synth name=my-run epochs=6",
              "asd-ray train --config infra/configs/train-s3.yaml num_workers=[2,8] use_gpu=true",
              "asd-ray train name=my-run epochs=10   # the same name resumes and runs 4 more epochs"],
    "tune": ["asd-ray tune train.data=data/synth num_samples=8 'space={lr: {loguniform: [1e-4, 1e-2]}}'"],
    "score": ["asd-ray score bundle=runs/train/my-run/model data=data/synth out=runs/score",
              "asd-ray score --config infra/configs/score-s3.yaml actors=8 use_gpu=true"],
    "evaluate": ["asd-ray evaluate --scores runs/score"],
}


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
    if summary["rejected"] > len(summary["rejects"]):
        print(f"  ... and {summary['rejected'] - len(summary['rejects'])} more in {summary['rejects_file']}")
    return DONE_WITH_UNUSED_INPUT if summary["rejected"] else DONE


def _train(args: argparse.Namespace) -> int:
    from asd_ray.train import TrainConfig, summary_text, train

    cfg = _load(args, TrainConfig)
    if cfg is None:
        return 0
    summary = train(cfg)
    print(summary_text(summary))
    tracking.log_training(cfg, summary)
    return DONE


def _score(args: argparse.Namespace) -> int:
    from asd_ray.score import ScoreConfig, run_score

    cfg = _load(args, ScoreConfig)
    if cfg is None:
        return 0
    summary = run_score(cfg)
    tracking.log_scoring(cfg, summary)
    print(f"scored {summary['scored']} clips ({', '.join(summary['groups'])}) into {summary['out']}")
    for clip, reason in summary["unscored_examples"]:
        print(f"  not scored: {clip}: {reason}")
    if summary["unscored"] > len(summary["unscored_examples"]):
        print(f"  ... {summary['unscored']} clips not scored in all: see {summary['out']}/unscored.csv")
    return DONE_WITH_UNUSED_INPUT if summary["unscored"] else DONE


def _evaluate(args: argparse.Namespace) -> int:
    from asd_ray.evaluate import EvaluateConfig, run_evaluate

    cfg = _load(args, EvaluateConfig, scores=args.scores, ray=False)
    if cfg is None:
        return 0
    result = run_evaluate(cfg)
    tracking.log_evaluation(cfg, result)
    if result["labelled"]:
        print(result["markdown"])
        print(f"official score {100 * result['official_score']:.2f}; report at {result['report']} "
              f"(look and listen: {result['report_html']})")
    else:
        print(f"no labels in {cfg.scores}: no metrics (give ground_truth=<folder> for an evaluation set); "
              f"score distributions and the highest-scoring clips at {result['report_html']}")
    return DONE


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
    print(f"report: {ev['report']}, to look and listen: {ev['report_html']}  (scores and DCASE files in "
          f"{result['score']['out']})")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from asd_ray.sweep import SweepConfig, run_sweep

    cfg = _load(args, SweepConfig)
    if cfg is None:
        return 0
    result = tracking.tracked_sweep(cfg, run_sweep)
    print(result["markdown"])
    print(f"best {result['metric']} {result['best']:.4f} with {result['best_params']}")
    print(f"best training config: {result['best_config']}  (asd-ray train --config <it>)")
    print(f"results: {result['results_csv']}, plot: {result['plot']}")
    return DONE_WITH_UNUSED_INPUT if result["errors"] else DONE


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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show Ray's own INFO lines and every warning of Ray's (off: they go to Ray's log files)")
    parser = argparse.ArgumentParser(prog="asd-ray", description=__doc__, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n" + "\n".join(f"  {e[0]}" for e in EXAMPLES.values()))
    parser.add_argument("--version", action="version", version=f"asd-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str, *args: tuple[str, str]) -> None:
        p = sub.add_parser(name, help=help, description=help, parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]))
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
    console.set_verbose(getattr(args, "verbose", False) or console.verbose())
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # our bad-input errors name what was expected
        if console.verbose() and not isinstance(e, ConfigError):
            traceback.print_exc()
        print(f"asd-ray {args.command}: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        raise
    except Exception:  # noqa: BLE001  (a failed job: the error in full)
        traceback.print_exc()
        print(f"asd-ray {args.command}: failed (exit {FAILED}); the error above", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
