"""``asd-ray evaluate``: official DCASE metrics of a scoring output, as tables and a report.

Writes under ``out`` (default ``<scores>/evaluation``): ``results.csv`` and ``results.md`` (AUC
source, AUC target, pAUC per machine and section; per machine type the evaluator's arithmetic and
harmonic means and asd_ray's harmonic mean of all three; the official score) and ``report.md``
with ROC curves and score histograms per machine type as PNG images; and ``report.html``, one
self-contained page per machine and section to look at and listen to (:mod:`asd_ray.report_html`).
A set without labels gets ``report.html`` alone (score distributions, highest-scoring clips).
The scores are read in two streaming passes (:mod:`asd_ray.score_summary`): an unlabelled set takes
the same memory at any size, a labelled one 10 bytes a clip.

Evaluation needs each clip's domain and label. A scored evaluation set (``section_XX_NNNN.wav``:
neither is known) is evaluated with the official evaluator's ground-truth files
(``ground_truth=<folder>``, see :mod:`asd_ray.ground_truth`).
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
from pydantic import Field

from asd_ray import dataset, ground_truth, metrics, report_html, schema, storage
from asd_ray.config import JobConfig
from asd_ray.score_output import read_scores, scored_batches
from asd_ray.score_summary import BINS, Summary, summarize, threshold
from asd_ray.storage import StorageOptions
from asd_ray.tracking import Tracked

COLUMNS = metrics.COLUMNS


class EvaluateConfig(JobConfig, Tracked):
    scores: str = Field("runs/score", description="URL of a scoring output (asd-ray score's out)")
    out: str | None = Field(None, description="where tables and report go (default <scores>/evaluation)")
    ground_truth: str | None = Field(None, description="folder of the DCASE evaluator's ground truth "
                                                       "(ground_truth_data/, ground_truth_domain/, "
                                                       "ground_truth_attributes/): domains and labels of a "
                                                       "scored evaluation set")
    storage: StorageOptions = StorageOptions()

    @property
    def out_url(self) -> str:
        return self.out or storage.join(self.scores, "evaluation")


def evaluate_table(table: pa.Table) -> tuple[list[dict], dict[str, float], float]:
    """Per-section rows, per-machine harmonic means of all their AUCs and pAUCs, and the official score."""
    return evaluate_summary(summarize(table.to_batches))


def evaluate_summary(summary: Summary) -> tuple[list[dict], dict[str, float], float]:
    """:func:`evaluate_table` of a scoring output's :class:`Summary`."""
    if not summary.labelled:
        raise ValueError(f"cannot evaluate: {summary.unknown} of {summary.clips} clips have no label or no domain (an "
                         f"evaluation set without ground truth). Evaluation needs labels: give ground_truth=<folder "
                         f"with the DCASE evaluator's ground_truth_data/, ground_truth_domain/ and "
                         f"ground_truth_attributes/>, or score a labelled test set")
    # a dataset without any target clip has one domain (DCASE 2020, MIMII): AUC and pAUC, no target AUC
    measured = ("source", "target") if summary.has_target else ("source",)
    columns = COLUMNS if len(measured) == 2 else ("auc_source", "pauc")
    rows = []
    for s in summary.ordered():
        score, anomaly, target = s.arrays()
        rows.append({"machine": s.machine, "section": s.section, **metrics.section_metrics(
            anomaly.astype(int), np.where(target, "target", "source"), score, machine=s.machine, section=s.section,
            measured=measured)})
    per_machine = {m: metrics.official_score([r for r in rows if r["machine"] == m], columns)
                   for m in summary.machines()}
    return rows, per_machine, metrics.official_score(rows, columns)


def markdown_table(rows: list[dict], per_machine: dict[str, float], overall: float) -> str:
    """Per section, then per machine type with several sections the evaluator's arithmetic and
    harmonic means of each column (the numbers its own tables print; with one section they are its
    row), and asd_ray's harmonic mean of all the machine's values, labelled as such: the evaluator
    has no per-machine "official score"."""
    means = metrics.machine_means(rows)
    lines = ["| machine | section | AUC (source) | AUC (target) | pAUC |", "|---|---|---|---|---|"]
    for m in sorted(per_machine):
        sections = [r for r in rows if r["machine"] == m]
        for r in sections:
            lines.append(f"| {m} | {r['section']} | " + " | ".join(metrics.percent(r[c]) for c in COLUMNS) + " |")
        for kind, name in (("mean", "arithmetic mean"), ("hmean", "harmonic mean")) if len(sections) > 1 else ():
            lines.append(f"| {m} | {name} | " + " | ".join(metrics.percent(means[m][f"{kind}_{c}"]) for c in COLUMNS)
                         + " |")
    lines += ["", "| machine | harmonic mean of its AUC (source), AUC (target) and pAUC values (asd_ray) |",
              "|---|---|"]
    lines += [f"| {m} | {100 * v:.2f} |" for m, v in sorted(per_machine.items())]
    lines.append(f"| **all: official score** | **{100 * overall:.2f}** |")
    return "\n".join(lines) + "\n"


def plots(summary: Summary) -> dict[str, bytes]:
    """report.md's ROC curve and score histogram per machine type (report.html's plots, drawn over
    all of the machine's sections) of a labelled set."""
    files = {}
    for m in summary.machines():
        schema.check_name("machine", m, "scores")  # it becomes a file name
        mine = [s for s in summary.ordered() if s.machine == m]
        score, anomaly, target = (np.concatenate(a) for a in zip(*(s.arrays() for s in mine)))
        thr = threshold(max(s.highest_normal for s in mine), min(s.lowest_anomalous for s in mine))
        edges = np.linspace(score.min(), score.max() + 1e-9, BINS)
        files[f"roc_{m}.png"] = report_html.roc_png(score, anomaly, target, m)
        files[f"hist_{m}.png"] = report_html.histogram_png(
            edges, report_html.labelled_histogram(score, anomaly, target, edges), thr, m)
    return files


def run_evaluate(cfg: EvaluateConfig) -> dict:
    def batches():  # the scores, a batch at a time (each pass reads them again)
        return scored_batches(cfg.scores, cfg.storage)

    if cfg.ground_truth:  # evaluation sets are small: their scores are read whole to take the ground truth
        table = ground_truth.apply(read_scores(cfg.scores, cfg.storage, by_clip_id=False), cfg.ground_truth,
                                   cfg.storage)
        batches = table.to_batches
    summary = summarize(batches)
    files: dict[str, bytes] = {}
    result: dict = {"rows": None, "per_machine": {}, "machine_means": {}, "official_score": None, "markdown": ""}
    if summary.labelled:
        result = metrics_files(summary, cfg, files)
    html_page = report_page(summary, result["rows"], result["official_score"], cfg)
    # the reports go last and old ones are removed first: an evaluation folder with a report is complete
    for name in ("report.md", "report.html"):
        storage.remove(storage.join(cfg.out_url, name), cfg.storage)
    files["report.html"] = html_page.encode()
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(cfg.out_url, name), data, cfg.storage)
    return {**result, "labelled": summary.labelled, "files": sorted(files),
            "report": storage.join(cfg.out_url, "report.md" if summary.labelled else "report.html"),
            "report_html": storage.join(cfg.out_url, "report.html")}


def metrics_files(summary: Summary, cfg: EvaluateConfig, files: dict[str, bytes]) -> dict:
    """The metrics of a labelled set: results.csv, results.md, report.md and its images into ``files``."""
    rows, per_machine, overall = evaluate_summary(summary)
    md = markdown_table(rows, per_machine, overall)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["machine", "section", *COLUMNS, "hmean_machine_all_values"])
    means = metrics.machine_means(rows)
    for m in sorted(per_machine):
        writer.writerows([r["machine"], r["section"], *(f"{r[c]:.6f}" for c in COLUMNS), ""]
                         for r in rows if r["machine"] == m)
        for kind, name in (("mean", "arithmetic mean"), ("hmean", "harmonic mean")):
            writer.writerow([m, name, *(f"{means[m][f'{kind}_{c}']:.6f}" for c in COLUMNS), ""])
        writer.writerow([m, "all", "", "", "", f"{per_machine[m]:.6f}"])
    writer.writerow(["all", "official score", "", "", "", f"{overall:.6f}"])
    report = ["# Anomaly detection report", "", f"Scores: `{cfg.scores}` ({summary.clips} clips). Metrics as the "
              "official DCASE evaluator computes them (AUC per domain with all anomalies; pAUC at FPR <= 0.1; "
              "official score = harmonic mean). Look and listen: `report.html`.", "", md]
    for m in sorted(per_machine):
        report += [f"## {m}", "", f"![ROC {m}](roc_{m}.png) ![scores {m}](hist_{m}.png)", ""]
    files.update({**plots(summary), "results.md": md.encode(), "results.csv": buf.getvalue().encode(),
                  "report.md": "\n".join(report).encode()})
    return {"rows": rows, "per_machine": per_machine, "machine_means": means, "official_score": overall,
            "markdown": md}


def report_page(summary: Summary, rows: list[dict] | None, official: float | None, cfg: EvaluateConfig) -> str:
    """report.html, with the shown clips' audio read from the scored dataset (named in the manifest)."""
    manifest = json.loads(storage.read_bytes(storage.join(cfg.scores, "manifest.json"), cfg.storage))
    data = manifest.get("config", {}).get("data")
    clips: dict = {}
    for machine, ids in report_html.clips_to_show(summary, rows is not None).items():
        schema.check_name("machine", machine, "scores")
        if data:
            clips.update(dataset.read_some_clips(data, "test", machine, ids, cfg.storage))
    title = "Anomaly detection report" if rows is not None else "Anomaly scores (unlabelled set)"
    text = (f"Scores: {cfg.scores} ({summary.clips} clips) of {data}. "
            + (f"Official score {100 * official:.2f}." if rows is not None else
               "No labels: score distributions and the highest-scoring clips; metrics need a labelled set "
               "or ground_truth=<folder>."))
    return report_html.render(summary, rows, clips, title, text)
