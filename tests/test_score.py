"""Fit, score and evaluate end to end on tiny synthetic data in the moto S3 server."""

import csv
import io
import json
import os
import signal
import threading
import time
import zipfile

import boto3
import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from asd_ray import bundle, cli, dataset, shards, storage
from asd_ray.evaluate import EvaluateConfig, run_evaluate
from asd_ray.reference_sample import RankCutoffs, SampleChunks, gather, ranks, training_cutoffs
from asd_ray.references import (References, kmeans_references, knn_references, mahalanobis_references, nearest,
                                read_sections, write_sections)
from asd_ray.score import ScoreConfig, read_scores, run_score
from asd_ray.synth.generate import Counts, SynthConfig, synthesize
from asd_ray.train import TrainConfig, train
from tiny import TINY_MODEL

B = "s3://asd-score"


@pytest.fixture(scope="module")
def hybrid(ray_local, s3_endpoint):
    """A dual-stream model trained with its companions (the default: the autoencoder, the frame
    statistics, the line alarms) and a second ensemble member, tiny."""
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="asd-score")
    counts = Counts(train_source=24, train_target=4, test_normal=6, test_anomaly=6)
    synthesize(SynthConfig(out=f"{B}/data", clip_seconds=1.0, machines=["fan", "compressor"], counts=counts),
               progress=False)
    synthesize(SynthConfig(out=f"{B}/fan-only", clip_seconds=1.0, machines=["fan"], counts=counts), progress=False)
    return train(TrainConfig(data=f"{B}/data", storage_path=f"{B}/runs", name="h", epochs=1, batch_size=8,
                             clip_seconds=1.0, n_subclusters=2, model=TINY_MODEL, cpus_per_worker=1, seed=3,
                             ensemble=2, autoencoder_epochs=1, autoencoder={"n_mels": 32, "hidden": 32}))


@pytest.fixture(scope="module")
def trained(hybrid):
    """The hybrid's dual-stream model: the tests that take it score it alone (``companions=False``)."""
    return hybrid["bundle"]


def test_the_hybrid_score_sums_each_detectors_score_normalised_per_section(hybrid):
    """By default a model trained with companions (an ensemble member, the autoencoder, the frame
    statistics, the line alarms) scores with all of them: each model's score standardised by its
    training clips' scores of that machine and section, then added, the ensemble's two members at
    half weight each (one term, their mean); thresholds from the summed training scores. Each
    model's own scores are recomputed here, in this process, from the references the job saved;
    one model is also scored alone by a job of its own, as a check of that recomputation."""
    from asd_ray.embedder import Embedder, embedding_column

    main = hybrid["bundle"]
    names = ["member-1", "autoencoder", "framestats", "tonal"]
    member, companion, frames, tonal = (hybrid["companions"][c]["bundle"] for c in names)
    assert [member, companion, frames, tonal] == [f"{main}/{c}" for c in names]
    assert bundle.load_bundle(main)[2].companions == names
    methods = [bundle.load_bundle(u)[2].method for u in (companion, frames, tonal)]
    assert methods == ["autoencoder", "framestats", "tonal"]
    assert bundle.load_bundle(member)[2].training["config"]["seed"] == 4  # another seed, another model
    runs = {}
    for name, url in (("ae", companion), ("hybrid", main)):
        cfg = ScoreConfig(data=f"{B}/data", out=f"{B}/out-{name}", bundle=url, batch_size=8,
                          references_to=f"{B}/out-{name}/refs.npz", actor_sections=1)  # two sections: evicted
        run_score(cfg)
        urls = [cfg.references_url] + ([f"{B}/out-{name}/refs-{i}.npz" for i in (1, 2, 3, 4)] if name == "hybrid"
                                       else [])
        runs[name] = (read_scores(cfg.out), [References.from_bytes(storage.read_bytes(u)) for u in urls])
    scores, refs = runs["hybrid"]
    assert [r.meta["method"] for r in refs] == ["knn", "knn", "mahalanobis", "framestats", "alarm"]
    assert [r.meta["bundle"] for r in refs] == [main, member, companion, frames, tonal]
    manifest = json.loads(storage.read_bytes(f"{B}/out-hybrid/manifest.json"))
    assert manifest["config"]["add_bundles"] == [member, companion, frames, tonal]  # what was used, named
    assert manifest["config"]["weights"] == [0.5, 0.5, 1, 1, 1] == refs[0].meta["weights"]
    embedder = Embedder([main, member, companion, frames, tonal], {}, use_gpu=False)
    for machine in ("compressor", "fan"):
        rows = np.flatnonzero(np.array(scores["machine"].to_pylist()) == machine)
        ids = [scores["clip_id"][int(i)].as_py() for i in rows]
        clips = dataset.read_some_clips(f"{B}/data", "test", machine, ids)
        vectors = embedder.embed({"audio": np.stack([clips[c][0] for c in ids]),
                                  "machine": np.array([machine] * len(ids))})
        singles = [r.score(machine, "00", vectors[embedding_column(k)]) for k, r in enumerate(refs)]
        assert not np.allclose(singles[0], singles[1])  # the member is another model
        ae_alone = runs["ae"][0]["score"].to_numpy()[rows]
        assert runs["ae"][0]["clip_id"].to_pylist() == scores["clip_id"].to_pylist()
        np.testing.assert_allclose(singles[2], ae_alone, rtol=1e-4)  # the companion scored alone, by a job
        norms = refs[0].meta["norms"][f"{machine}|00"]
        assert len(norms) == 5 and all(sd > 0 for _, sd in norms)
        expected = sum(w * (x - mu) / sd for x, (mu, sd), w in zip(singles, norms, [0.5, 0.5, 1, 1, 1]))
        np.testing.assert_allclose(scores["score"].to_numpy()[rows], expected, rtol=1e-4, atol=1e-4)
        assert np.isfinite(refs[0].thresholds[(machine, "00")])  # the section's: where a domain has none
        # each clip judged by the threshold of the domain of the main model's nearest references
        _, nearest_domain = refs[0].score_and_domain(machine, "00", vectors["embedding"])
        per_domain = refs[0].meta["domain_thresholds"][f"{machine}|00"]
        assert sorted(per_domain) == ["source", "target"] and all(np.isfinite(t) for t in per_domain.values())
        expected = scores["score"].to_numpy()[rows] > np.array([per_domain[d] for d in nearest_domain])
        assert ((scores["decision"].to_numpy()[rows] == 1) == expected).all()


def test_references_saved_by_one_job_score_new_clips_in_another_without_the_training_set(hybrid, monkeypatch):
    """``references_from``: a job scores with the references an earlier job fitted and saved (every
    model's file of the hybrid), without a pass over the training clips, and gives the scores and
    decisions of the job that fitted them; references of other models or settings are refused,
    the file and what differs named."""
    from asd_ray import score

    main = hybrid["bundle"]
    fit = ScoreConfig(bundle=main, data=f"{B}/fan-only", out=f"{B}/out-fit", batch_size=8,
                      references_to=f"{B}/out-fit/refs.npz")
    run_score(fit)

    def no_training_pass(*args, **kwargs):
        raise AssertionError("the training clips were read")

    monkeypatch.setattr(score, "sample_training_clips", no_training_pass)
    reuse = ScoreConfig(bundle=main, data=f"{B}/fan-only", out=f"{B}/out-reuse", batch_size=8,
                        references_from=fit.references_url)
    run_score(reuse)
    fitted, reused = (read_scores(c.out).sort_by("clip_id") for c in (fit, reuse))
    assert fitted.num_rows == reused.num_rows == 24
    assert fitted["clip_id"].to_pylist() == reused["clip_id"].to_pylist()
    np.testing.assert_allclose(reused["score"].to_numpy(), fitted["score"].to_numpy(), rtol=1e-6)
    assert reused["decision"].to_pylist() == fitted["decision"].to_pylist()
    assert not [f for f in storage.fsspec_fs(reuse.out)[0].ls(reuse.out.removeprefix("s3://")) if f.endswith(".npz")]

    refused = {"companions=false": (reuse.model_copy(update={"companions": False, "out": f"{B}/out-r1"}),
                                    "fitted for 5 model\\(s\\).* this job scores with 1"),
               "decision_percentile": (reuse.model_copy(update={"decision_percentile": 95.0, "out": f"{B}/out-r2"}),
                                       "fitted with decision_percentile=90.0; this job has decision_percentile=95.0"),
               "covariance": (reuse.model_copy(update={"autoencoder_covariance": "domain", "out": f"{B}/out-r3"}),
                              "refs-2.npz was fitted with covariance 'pooled'; this job has 'domain'"),
               "missing": (reuse.model_copy(update={"references_from": f"{B}/nowhere/refs.npz", "out": f"{B}/out-r4"}),
                           "nowhere/refs.npz .* does not exist")}
    for name, (cfg, message) in refused.items():
        with pytest.raises(ValueError, match=message):
            run_score(cfg)
        assert not storage.exists(f"{cfg.out}/manifest.json"), name
    with pytest.raises(ValidationError, match="references_from: the references are fitted already; fit_data"):
        ScoreConfig(bundle=main, fit_data=f"{B}/data", references_from=fit.references_url)


def test_a_scoring_actor_loads_the_sections_it_needs_and_keeps_at_most_actor_sections(trained):
    """The fitted references reach the actors one object per section; an actor loads a section's
    when a batch needs it and drops the least recently used past ``actor_sections``."""
    import ray

    from asd_ray.embedder import Embedder
    from asd_ray.score import ship_sections

    rng = np.random.default_rng(5)
    unit = rng.normal(size=(60, 8)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    keys = [("fan", "00"), ("fan", "01"), ("pump", "00")]
    fitted = {}
    for i, key in enumerate(keys):
        fitted[key] = knn_references({(*key, "source"): unit[20 * i:20 * i + 15],
                                      (*key, "target"): unit[20 * i + 15:20 * i + 20]})
        fitted[key].thresholds, fitted[key].meta = {key: float(i)}, {"method": "knn"}
    sections = {key: [ray.put(refs.to_bytes())] for key, refs in fitted.items()}
    embedder = Embedder(trained, {}, use_gpu=False, references=ship_sections(sections), cached_sections=2)
    for key in ("fan|00", "fan|01", "fan|00", "pump|00"):
        assert embedder.section_refs(key) is not None
    assert list(embedder.loaded) == ["fan|00", "pump|00"]  # fan|01, the least recently used, dropped
    assert embedder.section_refs("valve|00") is None and len(embedder.loaded) == 2
    again = embedder.section_refs("fan|01")[0]
    assert list(embedder.loaded) == ["pump|00", "fan|01"] and again.thresholds == {("fan", "01"): 1.0}
    queries = unit[:5] * 0.8 + 0.2 * unit[40:45]
    np.testing.assert_allclose(again.score("fan", "01", queries), fitted[("fan", "01")].score("fan", "01", queries),
                               rtol=1e-6)


def test_weights_name_one_positive_number_per_model_and_are_the_bundles_own_with_companions(trained):
    with pytest.raises(ValidationError, match="expected a positive number per model, 2 in all"):
        ScoreConfig(bundle=trained, companions=False, add_bundles=[f"{trained}/autoencoder"], weights=[1.0])
    with pytest.raises(ValidationError, match="expected a positive number per model, 2 in all"):
        ScoreConfig(bundle=trained, companions=False, add_bundles=[f"{trained}/autoencoder"], weights=[1.0, 0.0])
    cfg = ScoreConfig(bundle=trained, data=f"{B}/data", out=f"{B}/out-weights", weights=[2.0])
    with pytest.raises(ValueError, match="give weights with companions=false"):
        run_score(cfg)
    assert not storage.exists(f"{B}/out-weights/manifest.json")


def test_an_added_autoencoder_without_a_model_for_a_machine_type_is_refused(trained):
    """An autoencoder bundle for fan alone (untrained weights: what it would score does not matter)."""
    from asd_ray.autoencoder import AEConfig, MachineAutoEncoders
    from asd_ray.labels import LabelMap
    from asd_ray.model import ModelConfig

    info = bundle.BundleInfo(method="autoencoder", model=ModelConfig(**TINY_MODEL),
                             autoencoder=AEConfig(n_mels=32, hidden=32),
                             labels=LabelMap(classes=["fan|00|source"]), n_subclusters=1,
                             sample_rate=16000, clip_samples=16000)
    fan_ae = bundle.save_bundle(f"{B}/runs/ae-fan/model", info, bundle.weights_bytes(
        MachineAutoEncoders(["fan"], info.autoencoder), None))
    cfg = ScoreConfig(bundle=trained, companions=False, add_bundles=[fan_ae], data=f"{B}/data",
                      out=f"{B}/out-refused", batch_size=8, references_to=f"{B}/out-refused/refs.npz")
    with pytest.raises(ValueError, match="no model for machine type 'compressor'"):
        run_score(cfg)
    assert not storage.exists(f"{B}/out-refused/manifest.json")


def _test_clip_ids(data):
    return sorted(i for u in shards.list_shards(data, split="test")
                  for i in shards.read_shard(u, columns=["clip_id"])["clip_id"].to_pylist())


def test_every_test_clip_scored_once_with_dcase_files(trained):
    cfg = ScoreConfig(bundle=trained, companions=False, data=f"{B}/data", out=f"{B}/out", batch_size=8,
                      references="centroid")
    summary = run_score(cfg)
    # a bundle trained with companions, scored alone: the manifest names no other model
    assert json.loads(storage.read_bytes(f"{cfg.out}/manifest.json"))["config"]["add_bundles"] == []
    table = read_scores(cfg.out)
    assert table["clip_id"].to_pylist() == _test_clip_ids(f"{B}/data") and summary["unscored"] == 0
    assert table.num_rows == 2 * 2 * (6 + 6) and set(table["decision"].to_pylist()) <= {0, 1}
    assert np.isfinite(table["score"].to_numpy()).all() and (table["score"].to_numpy() >= 0).all()
    fs, root = storage.fsspec_fs(cfg.out)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root))
    for machine in ("compressor", "fan"):
        for prefix in ("anomaly_score", "decision_result"):
            assert f"{prefix}_{machine}_section_00_test.csv" in names
        rows = list(csv.reader(io.StringIO(storage.read_bytes(
            f"{cfg.out}/anomaly_score_{machine}_section_00_test.csv").decode())))
        assert len(rows) == 24 and all(r[0].startswith("section_00_") and r[0].endswith(".wav") for r in rows)
        stored = {c.rsplit("/", 1)[-1] + ".wav": s for c, s in zip(table["clip_id"].to_pylist(),
                                                                    table["score"].to_pylist())}
        assert all(float(s) == pytest.approx(stored[f]) for f, s in rows)
    refs = References.from_bytes(storage.read_bytes(f"{trained}/references.npz"))
    assert sorted(refs.vectors) == [("compressor", "00"), ("fan", "00")]
    assert all(len(v) == 2 for v in refs.vectors.values())  # centroids: one per domain

    result = run_evaluate(EvaluateConfig(scores=cfg.out))
    labels = np.array([v == "anomaly" for v in table["label"].to_pylist()])
    fan = np.array([m == "fan" for m in table["machine"].to_pylist()])
    assert result["rows"][1]["pauc"] == roc_auc_score(labels[fan], table["score"].to_numpy()[fan], max_fpr=0.1)
    for name in ("results.md", "results.csv", "report.md", "roc_fan.png", "hist_compressor.png"):
        data = storage.read_bytes(f"{cfg.out}/evaluation/{name}")
        assert data[:4] == b"\x89PNG" if name.endswith(".png") else len(data) > 50

    # a re-run (as after a crash that left an incomplete folder) gives the same complete output
    fs.rm_file(f"{root}/manifest.json")
    storage.write_bytes_atomic(f"{cfg.out}/anomaly_score_fan_section_00_test.csv", b"half")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        read_scores(cfg.out)
    run_score(cfg)
    assert read_scores(cfg.out).equals(table)


def test_kmeans_references(trained):
    cfg = ScoreConfig(bundle=trained, companions=False, data=f"{B}/data", out=f"{B}/out-km", references="kmeans",
                      kmeans_clusters=3, references_to=f"{B}/out-km/refs.npz")
    run_score(cfg)
    refs = References.from_bytes(storage.read_bytes(cfg.references_url))
    for key in refs.vectors:
        assert sorted(refs.domains[key].tolist()).count("source") == 3
        assert sorted(refs.domains[key].tolist()).count("target") == 4  # every target training clip kept
    assert read_scores(cfg.out).num_rows == 48


def _angles(*radians):
    return [np.array([np.cos(a), np.sin(a), 0.0]) for a in radians]


def test_knn_references_put_both_domains_on_one_scale():
    # a dense source domain (neighbours 0.1 rad apart) and a sparse target one (0.5 rad apart)
    refs = knn_references({("fan", "00", "source"): _angles(0.0, 0.1, 0.2),
                           ("fan", "00", "target"): _angles(1.0, 1.5)})
    refs = References.from_bytes(refs.to_bytes())  # the scales survive the round trip
    np.testing.assert_allclose(refs.scales[("fan", "00")], [1 - np.cos(0.1)] * 3 + [1 - np.cos(0.5)] * 2,
                               rtol=1e-4)  # distances in float32
    query = np.stack(_angles(1.25, 0.15))
    expected = [(1 - np.cos(0.25)) / (1 - np.cos(0.5)),  # halfway between the target clips: 0.25 of their spacing
                (1 - np.cos(0.05)) / (1 - np.cos(0.1))]
    np.testing.assert_allclose(refs.score("fan", "00", query), expected, rtol=1e-4)  # vectors stored as float32
    score, domain = refs.score_and_domain("fan", "00", query)  # the same distances, a domain at a time
    np.testing.assert_array_equal(score, refs.score("fan", "00", query))
    assert list(domain) == ["target", "source"]
    from asd_ray.embedder import thresholds

    refs.thresholds = {("fan", "00"): 5.0}
    assert thresholds(refs, "fan", "00", domain) == 5.0  # references fitted before: the section's
    refs.meta["domain_thresholds"] = {"fan|00": {"target": 1.0}}
    assert list(thresholds(refs, "fan", "00", domain)) == [1.0, 5.0]  # a domain without one: the section's
    with pytest.raises(ValueError, match="fan section 00 target has 1"):
        knn_references({("fan", "00", "source"): _angles(0.0, 0.1), ("fan", "00", "target"): _angles(1.0)})


class _Recorded(io.BytesIO):
    """A file whose reads' start offsets are recorded (one list per opened file)."""

    def __init__(self, data: bytes, starts: list[list[int]]):
        super().__init__(data)
        self.starts = []
        starts.append(self.starts)

    def read(self, n=-1):
        self.starts.append(self.tell())
        return super().read(n)


def test_saved_references_are_read_a_section_at_a_time_each_array_in_order():
    rng, keys = np.random.default_rng(0), [("fan", f"{s:02d}") for s in range(6)]
    parts = [References({k: rng.standard_normal((400, 64)).astype(np.float32)},
                        {k: np.array(["source"] * 390 + ["target"] * 10)}, {k: float(i)}, {"method": "knn"},
                        {k: np.full(400, 1.0 + i)}, standard={k: rng.standard_normal((2, 64))})
             for i, k in enumerate(keys)]
    out = io.BytesIO()
    write_sections(out, iter(parts), {"method": "knn"})
    starts: list[list[int]] = []
    read = list(read_sections(lambda: _Recorded(out.getvalue(), starts)))
    assert [next(iter(r.vectors)) for r in read] == keys and all(r.meta == {"method": "knn"} for r in read)
    for got, want in zip(read, parts):
        key = next(iter(got.vectors))
        for name in ("vectors", "domains", "scales", "standard"):
            np.testing.assert_array_equal(getattr(got, name)[key], np.asarray(getattr(want, name)[key],
                                                                              getattr(got, name)[key].dtype))
        assert got.thresholds == want.thresholds
    # one file for the small arrays and one per array of rows, each read front to back: on object
    # storage a shared file would jump between the arrays and refetch its read-ahead at each jump
    directory = zipfile.ZipFile(out).start_dir  # the central directory: read first by each file
    assert len(starts) == 5
    for offsets in starts:
        rows = [o for o in offsets if o < directory]
        assert rows == sorted(rows)
    assert len([o for o in starts[1] if o < directory]) >= len(keys)  # the vectors: a read per section at least


def test_training_scores_leave_each_clip_out():
    groups = {("fan", "00", "source"): _angles(0.0, 0.1, 0.2), ("fan", "00", "target"): _angles(1.0, 1.5)}
    refs = kmeans_references(groups, 1)  # the source centroid (at 0.1 rad) and both target clips
    np.testing.assert_allclose(refs.origins[("fan", "00")], [-1, 3, 4])
    clips = np.stack([e for k in sorted(groups) for e in groups[k]])
    expected = [1 - np.cos(0.1), 0.0, 1 - np.cos(0.1),  # the centroid is no clip: nothing left out
                1 - np.cos(0.5), 1 - np.cos(0.5)]       # a target clip's nearest other reference
    np.testing.assert_allclose(refs.training_scores(("fan", "00"), clips), expected, atol=1e-6)  # float32
    # chunking changes nothing but float32 rounding: a matrix product's last bit depends on its shape
    # and on the CPU's kernels (seen here: 1e-7 relative between chunk=2 and one chunk)
    vectors = np.random.default_rng(0).normal(size=(7, 3))
    exclude = np.array([1, -1, 0, 2, -1, -1, 6])
    np.testing.assert_allclose(nearest(vectors, vectors, np.ones(7), exclude, chunk=2),
                               nearest(vectors, vectors, np.ones(7), exclude), rtol=1e-5)


@pytest.mark.parametrize("pooled", [False, True])
def test_gaussian_references_score_their_training_clips_out_of_sample(pooled):
    """A Gaussian fitted on few clips in many dimensions scores those clips far below unseen normal
    clips; thresholds and hybrid norms from such scores flagged almost every normal clip. The
    training scores must come from fits that did not see the clip: then they are distributed as a
    fresh normal clip's scores are, with the covariance pooled over the domains or not."""
    rng = np.random.default_rng(0)
    dims, spread = 40, np.linspace(0.2, 2.0, 40)

    def clips(n, centre):  # column 0 is the MSE, unused by the Gaussians
        return list(np.column_stack([np.zeros(n), centre + spread * rng.normal(size=(n, dims))]))
    groups = {("valve", "00", "source"): clips(200, 0.0), ("valve", "00", "target"): clips(12, 3.0)}
    refs = mahalanobis_references(groups, pooled=pooled)
    key = ("valve", "00")
    train = np.stack(groups[("valve", "00", "source")] + groups[("valve", "00", "target")])
    held_out = refs.training_scores(key, train)
    in_sample = refs.score(*key, train)
    for domain, rows, centre in (("source", slice(0, 200), 0.0), ("target", slice(200, None), 3.0)):
        fresh = np.median(refs.score(*key, np.stack(clips(400, centre))))
        assert 0.75 * fresh < np.median(held_out[rows]) < 1.33 * fresh, domain
        if domain == "target" and not pooled:  # the target fit had seen its 12 clips: far below fresh ones
            assert np.median(in_sample[rows]) < 0.6 * fresh
    one = mahalanobis_references({("valve", "00", "source"): clips(20, 0.0), ("valve", "00", "target"): clips(1, 3.0)},
                                 pooled=pooled)
    assert np.isinf(one.training_scores(key, None)[20:]).all()  # a lone target clip has no out-of-sample score


def test_pooled_covariance_finds_a_target_fault_that_ten_clips_cannot_shape():
    """The target domain's 10 clips give a mean, not a covariance in 40 dimensions: their own
    (Ledoit-Wolf) covariance is near-spherical, so a fault that moves clips along the directions in
    which normal clips hardly vary is lost in the spread along the others. Pooled with the source
    clips' deviations from their own mean, the covariance knows those directions."""
    rng = np.random.default_rng(1)
    spread = np.linspace(0.1, 3.0, 40)

    def clips(n, centre, fault=0.0):  # column 0 is the MSE, unused by the Gaussians
        x = centre + spread * rng.normal(size=(n, 40))
        x[:, :8] += fault  # along the eight quietest directions
        return np.column_stack([np.zeros(n), x])
    groups = {("valve", "00", "source"): clips(300, 0.0), ("valve", "00", "target"): clips(10, 2.0)}
    test = np.vstack([clips(100, 2.0), clips(100, 2.0, fault=1.5)])
    auc = {pooled: roc_auc_score([0] * 100 + [1] * 100,
                                 mahalanobis_references(groups, pooled=pooled).score("valve", "00", test))
           for pooled in (False, True)}
    assert auc[True] > 0.95 and auc[True] > auc[False] + 0.2, auc


def test_sections_fitted_in_ray_tasks_are_one_fit_of_every_section(ray_local, tmp_path):
    """``asd-ray score`` fits each (machine, section) in a Ray task of its own (``fit_sample``), whose
    references stay in the object store: each model's file, written from them a section at a time,
    holds the references, the hybrid's norms and the thresholds of one fit over all sections, and a
    section's bad input is refused as the job's own error, section named."""
    import ray

    from asd_ray.labels import LabelMap
    from asd_ray.model import ModelConfig
    from asd_ray.reference_fit import build_references, fit_sample, save_references, section_norm, threshold
    from asd_ray.embedder import hybrid_sum
    from asd_ray.references import section_clips

    infos = [bundle.BundleInfo(method=method, model=ModelConfig(**TINY_MODEL), labels=LabelMap(classes=["a", "b"]),
                               n_subclusters=1, sample_rate=16000, clip_samples=16000)
             for method in ("scadacos", "autoencoder", "framestats")]
    cfg = ScoreConfig(companions=False, add_bundles=["ae", "framestats"], weights=[0.5, 1.0, 2.0],
                      references_to=str(tmp_path / "refs.npz"))
    rng = np.random.default_rng(3)

    def sample(lone_target: tuple[str, str] | None = None) -> tuple[SampleChunks, list[dict]]:
        """Two machine types of two sections each, 20 source and 5 target clips (1 in ``lone_target``),
        in the object store as the scoring job leaves them (chunks of mixed domains, in any order),
        and each model's vectors per group in clip id order, as one fit over all sections sees them."""
        chunks, groups = SampleChunks(), [{}, {}, {}]
        for machine, section in [(m, s) for m in ("fan", "pump") for s in ("00", "01")]:
            ids, domains, vectors = [], [], [[], [], []]
            for domain in ("source", "target"):
                n = 20 if domain == "source" else 1 if (machine, section) == lone_target else 5
                shift = rng.normal(size=8)
                for i in range(n):
                    unit = rng.normal(size=8)
                    ids.append(f"{machine}/train/section_{section}_{domain}_{i:04d}")
                    domains.append(domain)
                    for k, v in enumerate((unit / np.linalg.norm(unit), np.r_[rng.random(), shift + rng.normal(size=8)],
                                           shift[:6] + rng.normal(size=6))):
                        vectors[k].append(v)
            ids, domains, vectors = np.array(ids, object), np.array(domains, object), [np.array(v) for v in vectors]
            for domain in ("source", "target"):
                at = domains == domain
                for k in range(3):
                    groups[k][(machine, section, domain)] = vectors[k][at].astype(np.float32)
            order = rng.permutation(len(ids))
            for part in np.array_split(order, 3):
                chunks.add(machine, section, ids[part], domains[part], [v[part] for v in vectors])
        return chunks, groups

    clips, groups = sample()
    seen = {g: len(v) for g, v in groups[0].items()}
    fitted = fit_sample(cfg, infos, clips, seen)
    assert all(isinstance(r, ray.ObjectRef) for refs in fitted.sections.values() for r in refs)  # not the driver's
    save_references(cfg, infos, fitted)
    assert sorted(os.listdir(tmp_path)) == ["refs-1.npz", "refs-2.npz", "refs.npz"]  # whole files, no temporaries
    refs = [References.from_bytes(storage.read_bytes(url)) for url in cfg.references_urls()]
    whole = [build_references(cfg, info, groups[k]) for k, info in enumerate(infos)]
    keys = sorted(whole[0].vectors)
    assert len(keys) == 4 and sorted(refs[0].thresholds) == keys and sorted(fitted.summaries) == keys
    for got, want in zip(refs, whole):
        for field in ("vectors", "domains", "scales", "precisions", "standard"):
            if getattr(want, field) is None:
                assert getattr(got, field) is None, field
                continue
            assert sorted(getattr(got, field)) == keys, field
            for key in keys:
                if field == "domains":
                    assert list(got.domains[key]) == list(want.domains[key])
                else:
                    np.testing.assert_allclose(getattr(got, field)[key], getattr(want, field)[key], rtol=1e-6,
                                               err_msg=field)
    for key in keys:
        per_model = [r.training_scores(key, section_clips(groups[k], key)) for k, r in enumerate(whole)]
        norms = [section_norm(x) for x in per_model]
        np.testing.assert_allclose(refs[0].meta["norms"]["|".join(key)], norms, rtol=1e-6)
        assert refs[0].thresholds[key] == pytest.approx(threshold(hybrid_sum(per_model, norms, cfg.weights), 90.0,
                                                                  normal=True, key=key), rel=1e-6)
        summed = hybrid_sum(per_model, norms, cfg.weights)
        domains = np.concatenate([[d] * len(groups[0][(*key, d)]) for d in ("source", "target")])
        assert refs[0].meta["domain_thresholds"]["|".join(key)] == pytest.approx(
            {d: threshold(summed[domains == d], 90.0, normal=True, key=key) for d in ("source", "target")}, rel=1e-6)
        section = References.from_bytes(ray.get(fitted.sections[key][0]))  # what a scoring actor loads
        assert section.meta["norms"] == {"|".join(key): refs[0].meta["norms"]["|".join(key)]}  # its own only
        assert section.meta["domain_thresholds"] == {"|".join(key): refs[0].meta["domain_thresholds"]["|".join(key)]}
        assert section.thresholds == {key: refs[0].thresholds[key]}
    assert refs[0].meta["weights"] == [0.5, 1.0, 2.0]
    assert [r.meta["method"] for r in refs] == ["knn", "mahalanobis", "framestats"]
    assert refs[0].meta["kept"] == {"|".join(g): n for g, n in sorted(seen.items())} == refs[2].meta["clips"]
    odd = knn_references({(*keys[-1], d): np.eye(3, dtype=np.float32)[i:i + 2] for i, d in enumerate(("source",
                                                                                                 "target"))})
    odd_fit = fitted._replace(sections={**fitted.sections, keys[-1]: [ray.put(odd.to_bytes()),
                                                                      *fitted.sections[keys[-1]][1:]]})
    bad = cfg.model_copy(update={"references_to": str(tmp_path / "bad" / "refs.npz")})
    with pytest.raises(ValueError, match=r"pump section 01: vectors rows of shape \(3,\), the sections before \(8,\)"):
        save_references(bad, infos, odd_fit)
    assert os.listdir(tmp_path / "bad") == []  # nothing half-written

    with pytest.raises(ValueError, match="at least 2 .* pump section 01 target has 1") as refused:
        fit_sample(cfg, infos, sample(lone_target=("pump", "01"))[0], seen)
    assert not isinstance(refused.value, ray.exceptions.RayTaskError)  # the job's own message, not a task's traceback


def test_knn_references_end_to_end(trained):
    cfg = ScoreConfig(bundle=trained, companions=False, data=f"{B}/data", out=f"{B}/out-knn", references="knn",
                      references_to=f"{B}/out-knn/refs.npz")
    run_score(cfg)
    refs = References.from_bytes(storage.read_bytes(cfg.references_url))
    for key in refs.vectors:
        assert refs.domains[key].tolist() == ["source"] * 24 + ["target"] * 4  # every training clip
        assert len(set(refs.scales[key][:24])) == 1 and len(set(refs.scales[key][24:])) == 1
        assert 0 < refs.thresholds[key] < np.inf
    scores = read_scores(cfg.out)
    assert scores.num_rows == 48 and (scores["score"].to_numpy() > 0).all()


def test_clips_without_references_are_reported_not_scored(trained, capsys):
    code = cli.main(["score", f"bundle={trained}", f"data={B}/data", f"fit_data={B}/fan-only", f"out={B}/out-u",
                     f"references_to={B}/out-u/refs.npz", "companions=false", "tracking=false"])
    assert code == 1
    assert "not scored: compressor/test/" in capsys.readouterr().out
    table = read_scores(f"{B}/out-u")
    assert set(table["machine"].to_pylist()) == {"fan"}
    unscored = list(csv.reader(io.StringIO(storage.read_bytes(f"{B}/out-u/unscored.csv").decode())))[1:]
    assert len(unscored) == 24 and all("no references for machine 'compressor'" in r[1] for r in unscored)


def test_bundle_and_data_mismatch_is_a_clear_error(trained):
    synthesize(SynthConfig(out=f"{B}/8k", sample_rate=8000, clip_seconds=1.0, machines=["fan"],
                           counts=Counts(train_source=4, train_target=0, test_normal=2, test_anomaly=2)),
               progress=False)
    with pytest.raises(Exception, match="sample rate 8000 Hz, expected 16000 Hz"):
        run_score(ScoreConfig(bundle=trained, data=f"{B}/8k", out=f"{B}/out-8k"))
    assert not storage.exists(f"{B}/out-8k/manifest.json")
    with pytest.raises(Exception, match="no bundle.json"):
        run_score(ScoreConfig(bundle=f"{B}/data", data=f"{B}/data", out=f"{B}/out-x"))


def test_evaluation_layout_scores_without_labels_and_evaluates_with_ground_truth(trained):
    """The everyday job: new recordings without domain or label (DCASE evaluation layout,
    ``test/section_00_0000.wav``), ingested, scored, then evaluated with the evaluator's ground truth."""
    from asd_ray.ingest import IngestConfig, ingest

    fs, _ = storage.fsspec_fs(B)
    dev = f"{B}/eval-dev"
    synthesize(SynthConfig(out=dev, format="wav", clip_seconds=1.0, machines=["fan"],
                           counts=Counts(train_source=6, train_target=2, test_normal=3, test_anomaly=3)),
               progress=False)
    tests = sorted(p for p in fs.find(f"{dev[5:]}/fan/test") if p.endswith(".wav"))
    gt = {"ground_truth_data": [], "ground_truth_domain": [], "ground_truth_attributes": []}
    for i, path in enumerate(tests):  # renamed as the evaluation set is, the truth kept aside
        full = path.rsplit("/", 1)[-1][:-4]
        name = f"section_00_{i:04d}.wav"
        fs.mv(path, f"{dev[5:]}/fan/test/{name}")
        gt["ground_truth_data"].append(f"{name},{int('_anomaly_' in full)}")
        gt["ground_truth_domain"].append(f"{name},{int('_target_' in full)}")
        gt["ground_truth_attributes"].append(f"{name},{full}")
    for folder, lines in gt.items():
        storage.write_bytes_atomic(f"{B}/gt/{folder}/ground_truth_fan_section_00_test.csv",
                                   ("\n".join(lines) + "\n").encode())
    assert ingest(IngestConfig(src=dev, dest=f"{B}/eval-clips"), progress=False)["rejected"] == 0

    cfg = ScoreConfig(bundle=trained, companions=False, data=f"{B}/eval-clips", out=f"{B}/out-eval",
                      references_to=f"{B}/out-eval/refs.npz")
    assert run_score(cfg)["scored"] == 12
    table = read_scores(cfg.out)
    assert table["domain"].null_count == table["label"].null_count == 12  # unknown, not NaN
    assert set(table["decision"].to_pylist()) <= {0, 1} and np.isfinite(table["score"].to_numpy()).all()
    rows = list(csv.reader(io.StringIO(storage.read_bytes(f"{cfg.out}/anomaly_score_fan_section_00_test.csv")
                                       .decode())))
    assert sorted(r[0] for r in rows) == [f"section_00_{i:04d}.wav" for i in range(12)]

    # without labels: no metrics, a page of score distributions and the highest-scoring clips to hear
    unlabelled = run_evaluate(EvaluateConfig(scores=cfg.out))
    assert unlabelled["official_score"] is None and not unlabelled["labelled"]
    assert unlabelled["files"] == ["report.html"] and not storage.exists(f"{cfg.out}/evaluation/report.md")
    page = storage.read_bytes(unlabelled["report_html"]).decode()
    top = table["clip_id"][int(np.argmax(table["score"].to_numpy()))].as_py()
    assert "AUC (source)" not in page and "unlabelled" in page and top in page
    assert page.count("<audio") == 3 and page.count("data:audio/flac;base64,") == 3  # the top 3, playable inline
    assert cli.main(["evaluate", "--scores", cfg.out, f"ground_truth={B}/gt", "tracking=false"]) == 0
    result = run_evaluate(EvaluateConfig(scores=cfg.out, ground_truth=f"{B}/gt"))
    truth = dict(line.split(",") for line in gt["ground_truth_data"])
    names = [c.rsplit("/", 1)[-1] + ".wav" for c in table["clip_id"].to_pylist()]
    expected = roc_auc_score([int(truth[n]) for n in names], table["score"].to_numpy(), max_fpr=0.1)
    assert result["rows"][0]["pauc"] == pytest.approx(expected)
    assert storage.exists(f"{cfg.out}/evaluation/report.md")


def _old_nearest(queries, vectors, scales):
    """The distances as computed before references were sampled and searched in float32."""
    return ((1.0 - queries.astype(np.float64) @ vectors.astype(np.float64).T) / scales).min(axis=1)


def test_reference_sample_is_bounded_order_free_and_below_the_bound_changes_nothing(ray_local):
    """The sample per group is the ``limit`` clips of smallest rank, whatever the order and the
    parts the ranks and the embedded chunks come in; below the limit, every clip."""
    import pyarrow as pa
    import ray

    from asd_ray.reference_sample import keep_sampled

    rng = np.random.default_rng(1)
    unit = rng.normal(size=(300, 16))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    ids = np.array([f"fan/train/section_00_{'source' if i < 250 else 'target'}_{i:04d}" for i in range(300)], object)
    domains = np.array(["source"] * 250 + ["target"] * 50, object)
    order = rng.permutation(300)

    def cutoffs(limit, parts):
        merged = RankCutoffs(limit)
        for part in parts:
            own = RankCutoffs(limit)
            for domain in ("source", "target"):
                at = part[domains[part] == domain]
                own.add(("fan", "00", domain), ranks(0, ids[at]))
            merged.merge(own)
        return merged.finished()

    def sample(limit, parts):
        return gather(("fan", "00"), [ray.put((ids[p], domains[p], [unit[p].astype(np.float32)])) for p in parts], 1,
                      limit)

    whole = cutoffs(10_000, [np.arange(300)])
    assert whole.seen == {("fan", "00", "source"): 250, ("fan", "00", "target"): 50}
    groups, kept = sample(10_000, np.array_split(order, 7))
    assert kept == whole.seen
    np.testing.assert_array_equal(groups[0][("fan", "00", "source")], unit[:250].astype(np.float32))  # id order
    refs = knn_references(groups[0])
    queries = unit[:40] * 0.9 + rng.normal(size=(40, 16)) * 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    before = _old_nearest(queries, unit, refs.scales[("fan", "00")])
    after = refs.score("fan", "00", queries)
    assert (np.argsort(after) == np.argsort(before)).all()  # the same ranking as before the sample
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-6)

    bounded, shuffled = cutoffs(64, [np.arange(300)]), cutoffs(64, np.array_split(order, 5))
    assert bounded.seen == shuffled.seen == whole.seen
    assert bounded.cutoffs() == shuffled.cutoffs()
    source_ranks = ranks(0, ids[:250])
    assert bounded.cutoffs()[("fan", "00", "source")] == np.sort(source_ranks)[63]
    table = pa.table({"clip_id": list(ids) + ["fan/train/section_00_source_anomaly"],
                      "machine": ["fan"] * 301, "section": ["00"] * 301, "domain": list(domains) + ["source"],
                      "label": ["normal"] * 250 + [None] * 50 + ["anomaly"]})  # no label in training: normal
    rows = keep_sampled(table, 0, bounded.cutoffs())
    assert rows.num_rows == 64 + 50 and "fan/train/section_00_source_anomaly" not in rows["clip_id"].to_pylist()
    chosen = set(rows["clip_id"].to_pylist())
    assert chosen == set(ids[:250][source_ranks <= bounded.cutoffs()[("fan", "00", "source")]]) | set(ids[250:])
    at = np.array([c in chosen for c in ids])
    groups, kept = sample(64, [np.flatnonzero(at)[::-1]])
    assert kept == {("fan", "00", "source"): 64, ("fan", "00", "target"): 50}
    # more than the limit offered (a clip id twice over, say): the smallest ranks still, in id order
    again, _ = sample(64, [order])
    for key in groups[0]:
        np.testing.assert_array_equal(groups[0][key], again[0][key])
    assert len(knn_references(groups[0]).vectors[("fan", "00")]) == 114


def test_max_references_bounds_what_a_scoring_job_keeps(trained, monkeypatch):
    cfg = ScoreConfig(bundle=trained, companions=False, data=f"{B}/data", out=f"{B}/out-max", max_references=5,
                      references_to=f"{B}/out-max/refs.npz")
    listed, list_shards = [], shards.list_shards

    def listing(url, split, *args):
        listed.append(split)
        return list_shards(url, split, *args)

    monkeypatch.setattr(shards, "list_shards", listing)
    assert run_score(cfg)["scored"] == 48
    # one listing per split: the test split's read and its row count, the sample's two training passes
    assert listed == ["test", "train"]
    with pytest.raises(FileNotFoundError, match=r"no clip shards under .*/no-data \(split=test"):
        run_score(cfg.model_copy(update={"data": f"{B}/no-data", "fit_data": f"{B}/data", "out": f"{B}/out-none",
                                         "references_to": None}))
    assert listed == ["test", "train", "test"]  # a missing test split stops the job before the sample is read
    monkeypatch.undo()
    meta = References.from_bytes(storage.read_bytes(cfg.references_url)).meta
    assert meta["clips"]["fan|00|source"] == 24 and meta["kept"]["fan|00|source"] == 5
    assert meta["kept"]["fan|00|target"] == 4  # fewer than the bound: all
    refs = References.from_bytes(storage.read_bytes(cfg.references_url))
    assert all(len(v) == 9 for v in refs.vectors.values())
    # the sample is chosen before reading audio: the reader hands the actors the kept clips only
    from asd_ray.reference_sample import sample_filter

    cutoffs = training_cutoffs(dataset.checked_shards(f"{B}/data", "train", ["fan"], None), 5)
    assert {"|".join(g): n for g, n in cutoffs.seen.items()} == {k: v for k, v in meta["clips"].items()
                                                                  if k.startswith("fan|")}
    read = dataset.read_clips(f"{B}/data", split="train", machine="fan", num_samples=160,
                              row_filter=sample_filter(cutoffs)).select_columns(["domain"]).to_pandas()
    assert read["domain"].value_counts().to_dict() == {"source": 5, "target": 4}


def test_an_actor_killed_mid_job_is_replaced_and_every_clip_is_scored_once(trained, monkeypatch):
    """The scoring actor's process is killed while it works through the test clips: Ray Data
    starts another and retries its batches; the output holds each clip once, with the scores of
    an undisturbed run."""
    from ray.util.state import list_actors

    import asd_ray.score

    data = f"{B}/many"
    synthesize(SynthConfig(out=data, clip_seconds=1.0, machines=["fan"],
                           counts=Counts(train_source=8, train_target=2, test_normal=50, test_anomaly=50)),
               progress=False)
    quiet = ScoreConfig(bundle=trained, companions=False, data=data, out=f"{B}/out-calm", batch_size=2,
                        references="centroid",
                        references_to=f"{B}/out-calm/refs.npz")
    run_score(quiet)
    killed, scoring = [], threading.Event()
    prepare = asd_ray.score.prepare_outputs

    def prepare_then_signal(*args, **kwargs):  # the job's own step just before the scoring pass
        prepare(*args, **kwargs)
        scoring.set()
    monkeypatch.setattr(asd_ray.score, "prepare_outputs", prepare_then_signal)

    def embedders():
        return [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "Embedder" in a.class_name and a.pid]

    def kill_the_scoring_actor():
        scoring.wait(120)
        fitting = {a.actor_id for a in embedders()}  # the fitting pass's actors, if not gone yet
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for actor in embedders():
                if actor.actor_id not in fitting and not killed:
                    time.sleep(1.0)  # a few of its batches done
                    os.kill(actor.pid, signal.SIGKILL)
                    killed.append(actor.pid)
            time.sleep(0.1)
    watcher = threading.Thread(target=kill_the_scoring_actor, daemon=True)
    watcher.start()
    cfg = quiet.model_copy(update={"out": f"{B}/out-killed", "references_to": f"{B}/out-killed/refs.npz"})
    assert run_score(cfg)["scored"] == 200  # 50 normal + 50 anomalous per domain
    watcher.join()
    assert killed, "the scoring actor was not seen"
    calm, disturbed = read_scores(quiet.out), read_scores(cfg.out)
    assert disturbed["clip_id"].to_pylist() == calm["clip_id"].to_pylist() == sorted(_test_clip_ids(data))
    np.testing.assert_allclose(disturbed["score"].to_numpy(), calm["score"].to_numpy(), rtol=1e-5)
