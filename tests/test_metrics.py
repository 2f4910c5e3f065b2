import math
import sys

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from asd_ray import metrics
from asd_ray.evaluate import evaluate_table, markdown_table

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
    assert math.isnan(metrics.section_metrics(np.zeros(4), np.array(["source"] * 4), np.arange(4.0))["pauc"])


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
    assert md.count("\n") == 2 + 4 + 1 and "| fan | 00 | 100.00 | 100.00 | 100.00 | 100.00 |" in md


def test_evaluate_refuses_unlabelled_scores():
    table = _scores_table()
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.nulls(table.num_rows, pa.string()))
    with pytest.raises(ValueError, match="no label or no domain"):
        evaluate_table(table)
