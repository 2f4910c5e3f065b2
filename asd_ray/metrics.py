"""The DCASE Task 2 metrics, computed as the official evaluator computes them.

Follows ``nttcslab/dcase2023_task2_evaluator`` (``dcase2023_task2_evaluator.py`` at commit
c850537; the 2024 and 2025 evaluators keep these definitions), per machine type and section:

- AUC (source / target): ``roc_auc_score`` over the normal clips of that domain **and all**
  anomalous clips of the section (both domains): ``(domain == d) | (label == anomaly)``.
- pAUC: ``roc_auc_score(..., max_fpr=0.1)`` over all clips of the section (sklearn's
  standardised partial AUC, exactly what the evaluator calls).
- Official score: the harmonic mean of every AUC (source), AUC (target) and pAUC over all
  machine types and sections, each floored at machine epsilon (``scipy.stats.hmean``).
- Per machine type the evaluator prints the arithmetic and the harmonic mean of each of the
  three over the machine's sections (:func:`machine_means`).

A metric that cannot be computed (a domain with only normal or only anomalous clips) is an
error naming the machine, section and domain, never a value left out of a mean.
"""

from __future__ import annotations

import math
import sys

import numpy as np

MAX_FPR = 0.1
COLUMNS = ("auc_source", "auc_target", "pauc")


class MetricError(ValueError):
    """A metric is undefined for the clips given (one class only); the message says where."""


def section_metrics(labels: np.ndarray, domains: np.ndarray, scores: np.ndarray, machine: str = "?",
                    section: str = "?", measured: tuple[str, ...] = ("source", "target")) -> dict[str, float]:
    """``labels``: 1 anomaly / 0 normal; ``domains``: 'source' / 'target'; higher score = more anomalous.
    ``measured``: the domains whose AUC is computed (a one-domain dataset, DCASE 2020 or MIMII,
    has no target AUC: NaN)."""
    labels, domains, scores = np.asarray(labels), np.asarray(domains), np.asarray(scores, dtype=float)
    out = {}
    for domain in ("source", "target"):
        if domain not in measured:
            out[f"auc_{domain}"] = math.nan
            continue
        keep = (domains == domain) | (labels == 1)
        out[f"auc_{domain}"] = _auc(labels[keep], scores[keep], f"{machine} section {section} {domain}: AUC")
    out["pauc"] = _auc(labels, scores, f"{machine} section {section} (both domains): pAUC", MAX_FPR)
    return out


def _auc(labels: np.ndarray, scores: np.ndarray, what: str, max_fpr: float | None = None) -> float:
    normal, anomalous = int((labels == 0).sum()), int((labels == 1).sum())
    if not normal or not anomalous:
        raise MetricError(f"{what} needs normal and anomalous clips, found {normal} normal and {anomalous} "
                          f"anomalous")
    from sklearn.metrics import roc_auc_score  # imported when used: Train workers import this module

    return float(roc_auc_score(labels, scores, max_fpr=max_fpr))


def official_score(rows: list[dict[str, float]], columns: tuple[str, ...] = COLUMNS) -> float:
    """Harmonic mean of all AUC (source), AUC (target) and pAUC values of ``rows`` (sections);
    ``columns`` names fewer for a one-domain dataset (AUC and pAUC, as DCASE 2020 ranked)."""
    values = np.array([r[k] for k in columns for r in rows], dtype=float)
    if not len(values) or np.isnan(values).any():
        raise MetricError(f"the official score needs an AUC (source), AUC (target) and pAUC for every section; "
                          f"got {values.tolist()}")
    from scipy.stats import hmean  # imported when used: Train workers import this module

    return float(hmean(np.maximum(values, sys.float_info.epsilon)))


def machine_means(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per machine type, as the evaluator prints it: the arithmetic (``mean``) and harmonic (``hmean``)
    mean of each of AUC (source), AUC (target) and pAUC over the machine's sections."""
    from scipy.stats import hmean

    out: dict[str, dict[str, float]] = {}
    for machine in sorted({r["machine"] for r in rows}):
        mine = [r for r in rows if r["machine"] == machine]
        out[machine] = {**{f"mean_{c}": float(np.mean([r[c] for r in mine])) for c in COLUMNS},
                        **{f"hmean_{c}": float(hmean([r[c] for r in mine])) for c in COLUMNS}}
    return out


def percent(value: float) -> str:
    """A metric as the tables print it; n/a where it is not defined (no target domain in the data)."""
    return "n/a" if value != value else f"{100 * value:.2f}"
