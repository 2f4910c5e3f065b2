"""Screen settings of the line alarms (the tonal detector) on a quality run's data, without a job per setting.

For each setting (``tonal`` overrides, as for ``asd-ray train``): the tonal prominence of every
clip of the suite, the alarms' references and training-score norms as ``asd-ray score`` fits them
(``alarm_references``), and the official score of the detector alone and of the hybrid of the
run's dual-stream model, autoencoder and frame statistics with it (their scores as
``benchmarks/hybrid_rules.py`` reads them, summed with it as the hybrid does). The first row is
that hybrid without the alarms.

    python benchmarks/tonal_screen.py --out /tmp/qs/tune --run final14 --set max_hz=500 --set max_hz=2000
"""

import argparse

from asd_ray.config import load_config
from asd_ray.references import alarm_references
from asd_ray.tonal import TonalConfig, TonalSpectrum

from framestats_screen import detector_z, official, statistics, suite


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run whose other detectors' scores to add")
    p.add_argument("--set", action="append", default=[], help="tonal overrides of one setting, space-separated "
                   "(repeat for more settings; none: the defaults)")
    args = p.parse_args()
    train, train_audio, test, test_audio, table, z = suite(args.out, args.run)
    others = z[:3].sum(0)  # the dual-stream model, the autoencoder, the frame statistics
    print(f"| setting | alone | hybrid of the run's dual-stream, autoencoder, frame statistics ({args.run}) and it |")
    print(f"| without the line alarms | | {official(table, others)} |")
    for setting in args.set or [""]:
        cfg = load_config(TonalConfig, None, setting.split())
        model = TonalSpectrum(cfg, train["sample_rate"][0])
        score, mine = detector_z(train, statistics(model, train_audio), test, statistics(model, test_audio),
                                 fit=alarm_references)
        print(f"| {setting or 'defaults'} ({model.bins} numbers) | {official(table, score)} | "
              f"{official(table, others + mine)} |", flush=True)


if __name__ == "__main__":
    main()
