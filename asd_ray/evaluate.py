"""``asd-ray evaluate``: official DCASE metrics of a scoring output, as tables and a report.

Writes under ``out`` (default ``<scores>/evaluation``): ``results.csv`` and ``results.md`` (AUC
source, AUC target, pAUC per machine and section, the per-machine harmonic means and the official
score) and ``report.md`` with ROC curves and score histograms per machine type as PNG images.
"""

from __future__ import annotations

import csv
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from pydantic import Field  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from asd_ray import metrics, storage  # noqa: E402
from asd_ray.config import JobConfig  # noqa: E402
from asd_ray.score import read_scores  # noqa: E402
from asd_ray.storage import StorageOptions  # noqa: E402

COLUMNS = ("auc_source", "auc_target", "pauc")


class EvaluateConfig(JobConfig):
    scores: str = Field("runs/score", description="URL of a scoring output (asd-ray score's out)")
    out: str | None = Field(None, description="where tables and report go (default <scores>/evaluation)")
    storage: StorageOptions = StorageOptions()

    @property
    def out_url(self) -> str:
        return self.out or storage.join(self.scores, "evaluation")


def evaluate_table(table: pa.Table) -> tuple[list[dict], dict[str, float], float]:
    """Per-section rows, per-machine official scores and the overall official score."""
    d = table.to_pydict()
    if any(v is None for v in d["label"]) or any(v is None for v in d["domain"]):
        raise ValueError("cannot evaluate: some clips have no label or no domain (an evaluation set without "
                         "ground truth); score a labelled test set")
    label = np.array([v == "anomaly" for v in d["label"]], dtype=int)
    domain, score = np.array(d["domain"]), np.array(d["score"])
    machine, section = np.array(d["machine"]), np.array(d["section"])
    rows = []
    for m, s in sorted(set(zip(d["machine"], d["section"]))):
        keep = (machine == m) & (section == s)
        rows.append({"machine": m, "section": s, **metrics.section_metrics(label[keep], domain[keep], score[keep])})
    per_machine = {m: metrics.official_score([r for r in rows if r["machine"] == m]) for m in sorted(set(machine))}
    return rows, per_machine, metrics.official_score(rows)


def markdown_table(rows: list[dict], per_machine: dict[str, float], overall: float) -> str:
    lines = ["| machine | section | AUC (source) | AUC (target) | pAUC | official score (machine) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['machine']} | {r['section']} | " + " | ".join(f"{100 * r[c]:.2f}" for c in COLUMNS)
                     + f" | {100 * per_machine[r['machine']]:.2f} |")
    lines.append(f"| **all** | | | | | **{100 * overall:.2f}** |")
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plots(table: pa.Table) -> dict[str, bytes]:
    d = {k: np.array(v) for k, v in table.to_pydict().items()}
    files = {}
    for m in sorted(set(d["machine"].tolist())):
        keep = d["machine"] == m
        label, domain, score = (d["label"][keep] == "anomaly").astype(int), d["domain"][keep], d["score"][keep]
        fig, ax = plt.subplots(figsize=(4.5, 4))
        for dom in ("source", "target"):
            sel = (domain == dom) | (label == 1)
            if len(set(label[sel].tolist())) == 2:
                fpr, tpr, _ = roc_curve(label[sel], score[sel])
                ax.plot(fpr, tpr, label=dom)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.axvline(metrics.MAX_FPR, color="grey", lw=0.5)
        ax.set(title=f"{m}: ROC", xlabel="false positive rate", ylabel="true positive rate")
        ax.legend()
        files[f"roc_{m}.png"] = _png(fig)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        bins = np.linspace(score.min(), score.max(), 30)
        for dom in ("source", "target"):
            for lab, name in ((0, "normal"), (1, "anomaly")):
                sel = (domain == dom) & (label == lab)
                ax.hist(score[sel], bins=bins, alpha=0.5, label=f"{dom} {name}", histtype="stepfilled")
        ax.set(title=f"{m}: anomaly scores", xlabel="score (min cosine distance)", ylabel="clips")
        ax.legend(fontsize=7)
        files[f"hist_{m}.png"] = _png(fig)
    return files


def run_evaluate(cfg: EvaluateConfig) -> dict:
    table = read_scores(cfg.scores, cfg.storage)
    rows, per_machine, overall = evaluate_table(table)
    md = markdown_table(rows, per_machine, overall)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["machine", "section", *COLUMNS, "official_score_machine"])
    writer.writerows([r["machine"], r["section"], *(f"{r[c]:.6f}" for c in COLUMNS),
                      f"{per_machine[r['machine']]:.6f}"] for r in rows)
    writer.writerow(["all", "", "", "", "", f"{overall:.6f}"])
    images = plots(table)
    report = ["# Anomaly detection report", "", f"Scores: `{cfg.scores}` ({table.num_rows} clips). Metrics as the "
              "official DCASE evaluator computes them (AUC per domain with all anomalies; pAUC at FPR <= 0.1; "
              "official score = harmonic mean).", "", md]
    for m in sorted(per_machine):
        report += [f"## {m}", "", f"![ROC {m}](roc_{m}.png) ![scores {m}](hist_{m}.png)", ""]
    # report.md goes last and an old one is removed first: an evaluation folder with a report is complete
    storage.remove(storage.join(cfg.out_url, "report.md"), cfg.storage)
    files = {**images, "results.md": md.encode(), "results.csv": buf.getvalue().encode(),
             "report.md": "\n".join(report).encode()}
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(cfg.out_url, name), data, cfg.storage)
    return {"rows": rows, "per_machine": per_machine, "official_score": overall, "markdown": md,
            "report": storage.join(cfg.out_url, "report.md")}
