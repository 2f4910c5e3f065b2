"""Screen settings of the frame-statistics detector on a quality run's data, without a job per setting.

For each setting (``framestats`` overrides, as for ``asd-ray train``): the statistics of every clip
of the suite, references and training-score norms as ``asd-ray score`` fits them
(``knn_references(standardise=True)``), and the official score of the detector alone and of the
hybrid with it in place of the run's frame statistics (the run's dual-stream and autoencoder
scores as ``benchmarks/hybrid_rules.py`` reads them, summed with it as the hybrid does).

    python benchmarks/framestats_screen.py --out /tmp/qs/tune --run final12 --set cepstrum=0 --set cepstrum=1600
    python benchmarks/framestats_screen.py --out /tmp/qs/tune --run final12 --set "cepstrum=1600 cepstrum_n_fft=8192"
"""

import argparse

import numpy as np
import torch

from asd_ray import schema, shards, storage
from asd_ray.config import load_config
from asd_ray.framestats import FrameStats, FrameStatsConfig
from asd_ray.references import group_embeddings, knn_references, section_clips

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


def detector_z(train: dict, train_x: np.ndarray, test: dict, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Test scores, and the same standardised by the section's training-clip scores (the hybrid's norms)."""
    groups = group_embeddings(train_x, *(np.array(train[c]) for c in ("machine", "section", "domain")))
    refs = knn_references(groups, standardise=True)
    score, z = np.zeros(len(test_x)), np.zeros(len(test_x))
    sections = np.array([f"{m}|{s}" for m, s in zip(test["machine"], test["section"])])
    for key in refs.vectors:
        own = refs.training_scores(key, section_clips(groups, key))
        own = own[np.isfinite(own)]  # as asd-ray score's norms
        at = sections == "|".join(key)
        score[at] = refs.score(*key, test_x[at])
        z[at] = (score[at] - own.mean()) / (own.std() + 1e-12)
    return score, z


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="a quality.py --out folder (its data/ and scores/)")
    p.add_argument("--run", required=True, help="the quality run whose dual-stream and autoencoder scores to add")
    p.add_argument("--set", action="append", default=[], help="framestats overrides of one setting, "
                   "space-separated (repeat for more settings; none: the defaults)")
    args = p.parse_args()
    data = storage.join(args.out, "data")
    train, train_audio = clips(data, "train")
    test, test_audio = clips(data, "test")
    table, z = standardised(storage.join(args.out, "scores", args.run))
    order = {c: i for i, c in enumerate(table["clip_id"])}
    at = np.array([order[clip] for clip in test["clip_id"]])
    table, z = {k: [v[i] for i in at] for k, v in table.items()}, z[:, at]
    print(f"| setting | alone | hybrid with the run's dual-stream and autoencoder ({args.run}) |")
    for setting in args.set or [""]:
        cfg = load_config(FrameStatsConfig, None, setting.split())
        model = FrameStats(cfg, train["sample_rate"][0])
        score, mine = detector_z(train, statistics(model, train_audio), test, statistics(model, test_audio))
        alone, alone_per = evaluate(table, score)
        hybrid, hybrid_per = evaluate(table, z[0] + z[1] + mine)
        print(f"| {setting or 'defaults'} ({cfg.dim} numbers) | {100 * alone:.2f} ("
              + ", ".join(f"{m} {100 * v:.2f}" for m, v in alone_per.items()) + f") | {100 * hybrid:.2f} ("
              + ", ".join(f"{m} {100 * v:.2f}" for m, v in hybrid_per.items()) + ") |", flush=True)


if __name__ == "__main__":
    main()
