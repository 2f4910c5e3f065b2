"""Screen settings of the frame-statistics detector on a quality run's data, without a job per setting.

For each setting (``framestats`` overrides, as for ``asd-ray train``): the statistics of every clip
of the suite, references and training-score norms as ``asd-ray score`` fits them
(``knn_references(standardise=True)``), and the official score of the detector alone and of the
hybrid with it in place of the run's frame statistics (the run's other detectors' scores as
``benchmarks/hybrid_rules.py`` reads them: the dual-stream model, the autoencoder and the line
alarms, summed with it as the hybrid does).

    python benchmarks/framestats_screen.py --out /tmp/qs/tune --run final14 --set cepstrum=0 --set cepstrum=1600
    python benchmarks/framestats_screen.py --out /tmp/qs/tune --run final14 --set "cepstrum=1600 cepstrum_n_fft=8192"
"""

import argparse

import numpy as np
import torch

from asd_ray import schema, shards, storage
from asd_ray.config import load_config
from asd_ray.framestats import FrameStats, FrameStatsConfig
from asd_ray.references import References, group_embeddings, knn_references, section_clips
from asd_ray.reference_fit import section_norm

from hybrid_rules import evaluate, standardised

META = ("clip_id", "machine", "section", "domain")


def clips(data: str, split: str) -> tuple[dict[str, list], np.ndarray]:
    """A split's clips, meta columns (and sample rate) and int16 audio, from its live shards; a
    quality suite is small enough to hold."""
    meta, audio = {c: [] for c in (*META, "sample_rate")}, []
    for url in shards.list_shards(data, split=split):
        table = shards.read_shard(url, columns=[*meta, "audio"]).to_pydict()
        for c in meta:
            meta[c] += table[c]
        audio += [np.frombuffer(raw, "<i2") for raw in table["audio"]]
    return meta, np.stack(audio)


def statistics(model: FrameStats, audio: np.ndarray, batch: int = 64) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(pcm.astype(np.float32) / schema.PCM16_FULL_SCALE)).numpy()
                               for pcm in np.split(audio, range(batch, len(audio), batch))])


def detector_z(train: dict, train_x: np.ndarray, test: dict, test_x: np.ndarray,
               fit=lambda groups: knn_references(groups, standardise=True)) -> tuple[np.ndarray, np.ndarray]:
    """Test scores, and the same standardised by the section's training-clip scores (the hybrid's
    norms), with the references ``fit`` makes of the training clips' vectors (the frame statistics')."""
    groups = group_embeddings(train_x, *(np.array(train[c]) for c in ("machine", "section", "domain")))
    refs: References = fit(groups)
    score, z = np.zeros(len(test_x)), np.zeros(len(test_x))
    sections = np.array([f"{m}|{s}" for m, s in zip(test["machine"], test["section"])])
    for key in refs.vectors:
        mean, std = section_norm(refs.training_scores(key, section_clips(groups, key)))  # as asd-ray score's
        at = sections == "|".join(key)
        score[at] = refs.score(*key, test_x[at])
        z[at] = (score[at] - mean) / std
    return score, z


def suite(out: str, run: str) -> tuple[dict, np.ndarray, dict, np.ndarray, dict, np.ndarray]:
    """A quality run's training and test clips (meta, audio), and its test table and standardised
    detector scores (``hybrid_rules.standardised``) in the test clips' order."""
    data = storage.join(out, "data")
    train, train_audio = clips(data, "train")
    test, test_audio = clips(data, "test")
    table, z = standardised(storage.join(out, "scores", run))
    order = {c: i for i, c in enumerate(table["clip_id"])}
    at = np.array([order[clip] for clip in test["clip_id"]])
    return train, train_audio, test, test_audio, {k: [v[i] for i in at] for k, v in table.items()}, z[:, at]


def official(table: dict, score: np.ndarray) -> str:
    """The official score, and per machine type in brackets, in %."""
    overall, per = evaluate(table, score)
    return f"{100 * overall:.2f} (" + ", ".join(f"{m} {100 * v:.2f}" for m, v in per.items()) + ")"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run whose other detectors' scores to add")
    p.add_argument("--set", action="append", default=[], help="framestats overrides of one setting, "
                   "space-separated (repeat for more settings; none: the defaults)")
    args = p.parse_args()
    train, train_audio, test, test_audio, table, z = suite(args.out, args.run)
    print(f"| setting | alone | hybrid with the run's other detectors ({args.run}) |")
    for setting in args.set or [""]:
        cfg = load_config(FrameStatsConfig, None, setting.split())
        model = FrameStats(cfg, train["sample_rate"][0])
        score, mine = detector_z(train, statistics(model, train_audio), test, statistics(model, test_audio))
        hybrid = z.sum(0) - z[2] + mine  # z[2]: the run's frame statistics
        print(f"| {setting or 'defaults'} ({cfg.dim} numbers) | {official(table, score)} | {official(table, hybrid)} |",
              flush=True)


if __name__ == "__main__":
    main()
