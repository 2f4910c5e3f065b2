import math
import sys

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from asd_ray import metrics
from asd_ray.evaluate import evaluate_summary, evaluate_table, markdown_table
from asd_ray.score_output import score_columns, sections
from asd_ray.score_summary import summarize

# a section: 4 normal + 4 anomalous clips per domain
DOMAINS = np.array(["source"] * 8 + ["target"] * 8)
LABELS = np.array(([0] * 4 + [1] * 4) * 2)


def test_perfect_and_inverted_scores():
    perfect = metrics.section_metrics(LABELS, DOMAINS, LABELS + 0.1 * np.arange(16) / 16)
    assert perfect == {"auc_source": 1.0, "auc_target": 1.0, "pauc": 1.0}
    inverted = metrics.section_metrics(LABELS, DOMAINS, -LABELS.astype(float))
    assert inverted["auc_source"] == inverted["auc_target"] == 0.0
    # sklearn standardises partial AUC (McClish): the worst ranking gives 0.5 * p^2 / p ... mapped to its floor
    assert inverted["pauc"] == pytest.approx(roc_auc_score(LABELS, -LABELS.astype(float), max_fpr=0.1))


def test_domain_auc_uses_that_domains_normals_and_all_anomalies():
    """Source normals score low, target normals high: source AUC is perfect, target AUC is not,
    because both are measured against the anomalies of both domains."""
    scores = np.array([0, 0, 0, 0, 5, 5, 5, 5, 9, 9, 9, 9, 5, 5, 5, 5], dtype=float)
    m = metrics.section_metrics(LABELS, DOMAINS, scores)
    assert m["auc_source"] == 1.0
    keep = (DOMAINS == "target") | (LABELS == 1)
    assert m["auc_target"] == roc_auc_score(LABELS[keep], scores[keep]) == 0.0
    assert m["pauc"] == roc_auc_score(LABELS, scores, max_fpr=0.1)


def test_random_scores_match_sklearn_and_hover_near_half():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4000)
    domains = np.where(rng.random(4000) < 0.5, "source", "target")
    scores = rng.random(4000)
    m = metrics.section_metrics(labels, domains, scores)
    for d in ("source", "target"):
        keep = (domains == d) | (labels == 1)
        assert m[f"auc_{d}"] == roc_auc_score(labels[keep], scores[keep])
        assert abs(m[f"auc_{d}"] - 0.5) < 0.05
    assert abs(m["pauc"] - 0.5) < 0.05


def test_official_score_is_the_harmonic_mean_floored_at_epsilon():
    rows = [{"auc_source": 0.9, "auc_target": 0.6, "pauc": 0.7}, {"auc_source": 0.8, "auc_target": 0.5, "pauc": 0.55}]
    assert metrics.official_score(rows) == pytest.approx(hmean([0.9, 0.8, 0.6, 0.5, 0.7, 0.55]))
    rows[0]["auc_target"] = 0.0
    assert metrics.official_score(rows) == pytest.approx(hmean([0.9, 0.8, sys.float_info.epsilon, 0.5, 0.7, 0.55]))
    # a metric that cannot be computed is an error naming where, never a value left out of the mean
    with pytest.raises(metrics.MetricError, match="fan section 03 source: AUC needs normal and anomalous clips, "
                                                  "found 4 normal and 0 anomalous"):
        metrics.section_metrics(np.zeros(4), np.array(["source"] * 4), np.arange(4.0), machine="fan", section="03")
    # a section without target normal clips (what a validation budget of source clips gave): target AUC is undefined
    with pytest.raises(metrics.MetricError, match="pump section 00 target: AUC needs .* found 0 normal and 4"):
        metrics.section_metrics(LABELS[:8], DOMAINS[:8], np.arange(8.0), machine="pump", section="00")
    with pytest.raises(metrics.MetricError, match="every section"):
        metrics.official_score([{"auc_source": 0.9, "auc_target": math.nan, "pauc": 0.7}])


def _scores_table(n_sections=2):
    rows = []
    for machine in ("fan", "pump"):
        for s in range(n_sections):
            for i, (d, lab) in enumerate(zip(DOMAINS, LABELS)):
                rows.append({"clip_id": f"{machine}/test/section_{s:02d}_{d}_{i}", "machine": machine,
                             "section": f"{s:02d}", "domain": d, "label": "anomaly" if lab else "normal",
                             "score": float(lab) + i * 1e-3
                             + (1.2 if machine == "pump" and d == "target" and not lab else 0)})
    return pa.Table.from_pylist(rows)


def test_evaluate_table_per_machine_and_overall():
    rows, per_machine, overall = evaluate_table(_scores_table())
    assert len(rows) == 4 and per_machine["fan"] == 1.0
    assert per_machine["pump"] < 1.0 and overall == pytest.approx(
        metrics.official_score(rows))
    md = markdown_table(rows, per_machine, overall)
    assert "| fan | 00 | 100.00 | 100.00 | 100.00 |" in md
    # per machine type the evaluator's own numbers: arithmetic and harmonic means of each column
    means = metrics.machine_means(rows)
    pump = [r for r in rows if r["machine"] == "pump"]
    assert means["pump"]["mean_auc_target"] == pytest.approx(np.mean([r["auc_target"] for r in pump]))
    assert means["pump"]["hmean_pauc"] == pytest.approx(hmean([r["pauc"] for r in pump]))
    assert (f"| pump | arithmetic mean | {100 * means['pump']['mean_auc_source']:.2f} | "
            f"{100 * means['pump']['mean_auc_target']:.2f} | {100 * means['pump']['mean_pauc']:.2f} |") in md
    # asd_ray's harmonic mean of all the machine's values is labelled as its own, not as an official score
    assert "harmonic mean of its AUC (source), AUC (target) and pAUC values (asd_ray)" in md
    assert f"| pump | {100 * per_machine['pump']:.2f} |" in md and f"**{100 * overall:.2f}**" in md
    one_section = evaluate_table(_scores_table(n_sections=1))
    assert "arithmetic mean" not in markdown_table(*one_section)  # with one section the means are its row


def test_evaluate_refuses_unlabelled_scores():
    table = _scores_table()
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.nulls(table.num_rows, pa.string()))
    with pytest.raises(ValueError, match="64 of 64 clips have no label or no domain .* give ground_truth="):
        evaluate_table(table)


def _eval_set(root):
    """A scored evaluation set (no domain, no label) and the evaluator's ground truth for it."""
    from asd_ray import storage

    table = _scores_table(n_sections=1)
    d = table.to_pydict()
    full = [c.rsplit("/", 1)[-1] for c in d["clip_id"]]
    d["clip_id"] = [f"{m}/test/section_00_{i % 16:04d}" for i, m in enumerate(d["machine"])]
    for machine in ("fan", "pump"):
        idx = [i for i, m in enumerate(d["machine"]) if m == machine]
        for folder, value in (("ground_truth_data", lambda i: int(d["label"][i] == "anomaly")),
                              ("ground_truth_domain", lambda i: int(d["domain"][i] == "target")),
                              ("ground_truth_attributes", lambda i: full[i])):
            text = "".join(f"section_00_{i % 16:04d}.wav,{value(i)}\n" for i in idx)
            storage.write_bytes_atomic(f"{root}/{folder}/ground_truth_{machine}_section_00_test.csv", text.encode())
    labelled = pa.Table.from_pydict(d)
    unlabelled = labelled.set_column(labelled.schema.get_field_index("domain"), "domain",
                                     pa.nulls(labelled.num_rows, pa.string()))
    unlabelled = unlabelled.set_column(unlabelled.schema.get_field_index("label"), "label",
                                       pa.nulls(labelled.num_rows, pa.string()))
    return labelled, unlabelled


def test_ground_truth_files_label_an_evaluation_set(tmp_path):
    from asd_ray import ground_truth, storage

    root = str(tmp_path / "gt")
    labelled, unlabelled = _eval_set(root)
    filled = ground_truth.apply(unlabelled, root)
    assert filled.equals(labelled)
    assert evaluate_table(filled) == evaluate_table(labelled)
    # the same set scored under its full (dev-style) names is found through the name map
    full_names = unlabelled.set_column(0, "clip_id", _scores_table(1)["clip_id"])  # fan/test/section_00_source_0...
    assert ground_truth.apply(full_names, root)["label"].equals(labelled["label"])
    # a scored clip without ground truth, and ground truth without a score, are errors naming the file
    with pytest.raises(ValueError, match="ground_truth_data/ground_truth_fan_section_00_test.csv: 1 clips have "
                                         "ground truth but no score"):
        ground_truth.apply(unlabelled.slice(1), root)
    storage.write_bytes_atomic(f"{root}/ground_truth_domain/ground_truth_pump_section_00_test.csv", b"x.wav,2\n")
    with pytest.raises(ValueError, match="ground_truth_pump_section_00_test.csv: line 1 is .* expected "
                                         "<file>.wav,0|1"):
        ground_truth.apply(unlabelled, root)
    with pytest.raises(FileNotFoundError, match="ground_truth_gear_section_00_test.csv: no such ground-truth file"):
        ground_truth.apply(unlabelled.set_column(1, "machine", pa.array(["gear"] * unlabelled.num_rows)), root)


def test_a_one_domain_dataset_is_ranked_by_auc_and_pauc():
    """DCASE 2020 and MIMII have no target domain: no target AUC (n/a), the official score over the rest;
    a dataset with both domains still needs every target AUC."""
    table = _scores_table()
    source_only = table.filter(pa.compute.equal(table["domain"], "source"))
    rows, per_machine, overall = evaluate_table(source_only)
    assert all(math.isnan(r["auc_target"]) for r in rows)
    assert overall == pytest.approx(hmean([r[c] for c in ("auc_source", "pauc") for r in rows]))
    assert "| fan | 00 | 100.00 | n/a | 100.00 |" in markdown_table(rows, per_machine, overall)
    both = table.filter(pa.compute.invert(pa.compute.and_(pa.compute.equal(table["domain"], "target"),
                                                          pa.compute.equal(table["label"], "normal"))))
    with pytest.raises(metrics.MetricError, match="target: AUC needs"):  # target anomalies, no target normals
        evaluate_table(both)


def test_score_columns_hold_one_string_per_distinct_value_and_keep_unknowns():
    """What evaluate holds per clip: pointers to shared strings (not a string object per clip and
    column, as to_pydict made), unknown domains as None, clip ids as Arrow strings."""
    table = _scores_table()
    table = table.set_column(table.schema.get_field_index("domain"), "domain",
                             pa.array([None] + table["domain"].to_pylist()[1:], pa.string()))
    d = score_columns(table)
    assert len({id(v) for v in d["machine"]}) == 2 and len({id(v) for v in d["label"]}) == 2
    assert d["domain"][0] is None and d["domain"][1] == table["domain"][1].as_py()
    assert d["score"].dtype == np.float64 and np.array_equal(d["score"], table["score"].to_numpy())
    assert d["clip_id"][5].as_py() == table["clip_id"][5].as_py()
    assert [key for key, _ in sections(d)] == [(m, s) for m in ("fan", "pump") for s in ("00", "01")]


def _random_scores(n: int = 1500, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    anomaly = rng.random(n) < 0.15
    score = rng.normal(size=n) + 1.5 * anomaly
    return pa.table({"clip_id": [f"m/test/clip_{i:05d}" for i in range(n)],
                     "machine": rng.choice(["fan", "pump"], n), "section": rng.choice(["00", "01"], n),
                     "domain": rng.choice(["source", "target"], n, p=[0.8, 0.2]),
                     "label": np.where(anomaly, "anomaly", "normal"), "score": score,
                     "decision": (score > 1.0).astype(np.int8)})


def test_a_summary_built_a_batch_at_a_time_is_what_the_whole_table_gives():
    """evaluate's streaming passes (small batches, sections spread over them) give what the whole
    table gives computed directly: counts, threshold, histograms, the clips shown, the metrics."""
    table = _random_scores()
    summary = summarize(lambda: table.to_batches(max_chunksize=37))
    assert summary.labelled and summary.clips == table.num_rows
    d = table.to_pydict()
    score, decision = np.array(d["score"]), np.array(d["decision"])
    for (machine, section), s in summary.sections.items():
        rows = np.flatnonzero((np.array(d["machine"]) == machine) & (np.array(d["section"]) == section))
        assert s.clips == len(rows)
        thr = (score[rows][decision[rows] == 0].max() + score[rows][decision[rows] == 1].min()) / 2
        assert s.threshold == pytest.approx(thr)
        edges = np.linspace(score[rows].min(), score[rows].max() + 1e-9, 30)
        for dom in ("source", "target"):
            for lab in ("normal", "anomaly"):
                sel = [i for i in rows if d["domain"][i] == dom and d["label"][i] == lab]
                assert np.array_equal(s.histogram[f"{dom} {lab}"], np.histogram(score[sel], edges)[0])
        top = [d["clip_id"][i] for i in rows[np.argsort(-score[rows])][:3]]
        normal = [i for i in rows if d["label"][i] == "normal" and d["clip_id"][i] not in top]
        near = [d["clip_id"][i] for i in sorted(normal, key=lambda i: abs(score[i] - thr))[:2]]
        picks = s.picks(near=2)
        assert [p.clip_id for p in picks] == top + near
        assert [p.why for p in picks] == ["top 1", "top 2", "top 3", "normal near threshold", "normal near threshold"]
        kept, anomalous, target = s.arrays()
        assert sorted(kept) == sorted(score[rows]) and anomalous.sum() == sum(d["label"][i] == "anomaly" for i in rows)
    assert evaluate_summary(summary) == evaluate_table(table.combine_chunks())


def test_an_unlabelled_summary_keeps_nothing_per_clip():
    """One clip without a domain, late in the scores, makes the set unlabelled: the per-clip numbers
    kept until then are dropped, and the histograms are by domain, unknown included."""
    table = _random_scores()
    domains = table["domain"].to_pylist()
    domains[-1] = None
    table = table.set_column(table.schema.get_field_index("domain"), "domain", pa.array(domains, pa.string()))
    summary = summarize(lambda: table.to_batches(max_chunksize=100))
    assert not summary.labelled and summary.unknown == 1
    assert all(s.chunks == [] for s in summary.sections.values())
    last = summary.sections[(table["machine"][-1].as_py(), table["section"][-1].as_py())]
    assert set(last.histogram) == {"source", "target", "unknown domain"}
    assert sum(n.sum() for n in last.histogram.values()) == last.clips
    assert [p.why for p in last.picks(near=2)] == ["top 1", "top 2", "top 3"]
    with pytest.raises(ValueError, match="1 of 1500 clips have no label or no domain"):
        evaluate_summary(summary)
