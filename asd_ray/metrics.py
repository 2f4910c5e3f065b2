"""The DCASE Task 2 metrics, computed as the official evaluator computes them.

Follows ``nttcslab/dcase2023_task2_evaluator`` (``dcase2023_task2_evaluator.py`` at commit
c850537; the 2024 and 2025 evaluators keep these definitions), per machine type and section:

- AUC (source / target): ``roc_auc_score`` over the normal clips of that domain **and all**
  anomalous clips of the section (both domains): ``(domain == d) | (label == anomaly)``.
- pAUC: ``roc_auc_score(..., max_fpr=0.1)`` over all clips of the section (sklearn's
  standardised partial AUC, exactly what the evaluator calls).
- Official score: the harmonic mean of every AUC (source), AUC (target) and pAUC over all
  machine types and sections, each floored at machine epsilon (``scipy.stats.hmean``).
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

MAX_FPR = 0.1


def section_metrics(labels: np.ndarray, domains: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``labels``: 1 anomaly / 0 normal; ``domains``: 'source' / 'target'; higher score = more anomalous."""
    labels, domains, scores = np.asarray(labels), np.asarray(domains), np.asarray(scores, dtype=float)
    out = {}
    for domain in ("source", "target"):
        keep = (domains == domain) | (labels == 1)
        out[f"auc_{domain}"] = _auc(labels[keep], scores[keep])
    out["pauc"] = _auc(labels, scores, MAX_FPR)
    return out


def _auc(labels: np.ndarray, scores: np.ndarray, max_fpr: float | None = None) -> float:
    if len(set(labels.tolist())) < 2:
        return float("nan")  # undefined without both classes; left out of the means
    return float(roc_auc_score(labels, scores, max_fpr=max_fpr))


def official_score(rows: list[dict[str, float]]) -> float:
    """Harmonic mean of all AUC (source), AUC (target) and pAUC values of ``rows`` (sections)."""
    values = np.array([r[k] for k in ("auc_source", "auc_target", "pauc") for r in rows], dtype=float)
    values = values[~np.isnan(values)]
    return float(hmean(np.maximum(values, sys.float_info.epsilon))) if len(values) else float("nan")
