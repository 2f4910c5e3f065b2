"""``report.html``: one self-contained page to look at and listen to (no server: images and audio
are inside it, so it opens from object storage or a laptop alike).

Per machine type and section: the metrics (labelled sets), the ROC curve, the score histograms by
domain and label with the decision threshold, then the highest-scoring test clips and the normal
clips nearest to the threshold (labelled sets), each with its log-mel spectrogram and a player.
For an unlabelled set: the score distributions and the highest-scoring clips, without metrics.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from asd_ray import metrics  # noqa: E402
from asd_ray.autoencoder import mel_filterbank  # noqa: E402
from asd_ray.schema import PCM16_FULL_SCALE  # noqa: E402
from asd_ray.score_summary import Summary  # noqa: E402

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}.clip{display:inline-block;
margin:6px;padding:6px;border:1px solid #ddd;vertical-align:top;width:330px}.clip img{width:320px}
.clip audio{width:320px}.clip b{word-break:break-all}.muted{color:#666;font-size:90%}"""
HEADERS = {"auc_source": "AUC (source)", "auc_target": "AUC (target)", "pauc": "pAUC"}


def logmel_png(wave: np.ndarray, sample_rate: int) -> bytes:
    """A clip's log-mel spectrogram (64 bands) as a small PNG."""
    x = torch.from_numpy(wave.astype(np.float32) / PCM16_FULL_SCALE)
    n_fft = 1024
    spec = torch.stft(x, n_fft, 256, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    logmel = 10 * torch.log10(mel_filterbank(sample_rate, n_fft, 64) @ spec + 1e-10)
    fig, ax = plt.subplots(figsize=(4, 1.6))
    ax.imshow(logmel.numpy(), origin="lower", aspect="auto", cmap="magma",
              extent=[0, len(wave) / sample_rate, 0, 64])
    ax.set(xlabel="s", ylabel="mel band")
    return _png(fig, dpi=80)


def flac(wave: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def roc_png(score: np.ndarray, anomaly: np.ndarray, target: np.ndarray, title: str) -> bytes:
    """ROC curves per domain, each over that domain's normal clips and all anomalous clips (as the AUCs)."""
    y = anomaly.astype(int)
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    for dom, sel in (("source", ~target | anomaly), ("target", target | anomaly)):
        if len(set(y[sel].tolist())) == 2:
            fpr, tpr, _ = roc_curve(y[sel], score[sel])
            ax.plot(fpr, tpr, label=dom)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.axvline(metrics.MAX_FPR, color="grey", lw=0.5)
    ax.set(title=f"{title}: ROC", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=7)
    return _png(fig)


def histogram_png(edges: np.ndarray, counts: dict[str, np.ndarray], thr: float | None, title: str) -> bytes:
    """Score histograms (``counts`` per group on ``edges``) with the decision threshold."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for name, n in counts.items():
        if np.sum(n):
            ax.hist(edges[:-1], bins=edges, weights=n, alpha=0.5, label=name, histtype="stepfilled")
    if thr is not None:
        ax.axvline(thr, color="black", lw=1, ls="--", label="threshold")
    ax.set(title=f"{title}: scores", xlabel="anomaly score", ylabel="clips")
    ax.legend(fontsize=7)
    return _png(fig)


def labelled_histogram(score: np.ndarray, anomaly: np.ndarray, target: np.ndarray,
                       edges: np.ndarray) -> dict[str, np.ndarray]:
    """Counts per domain and label of a labelled set's scores (the groups of :func:`score_summary.group_names`)."""
    return {f"{dom} {lab}": np.histogram(score[(target == (dom == "target")) & (anomaly == (lab == "anomaly"))],
                                         edges)[0]
            for dom in ("source", "target") for lab in ("normal", "anomaly")}


def render(summary: Summary, rows: list[dict] | None, clips: dict[str, tuple[np.ndarray, int]],
           title: str, text: str, near: int = 2) -> str:
    """The page. ``summary``: the scores' :class:`score_summary.Summary`; ``rows``: the per-section
    metrics (None for an unlabelled set); ``clips``: audio of the clips :func:`clips_to_show` named."""
    esc = html.escape
    labelled = rows is not None
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><p>{esc(text)}</p>"]
    for s in summary.ordered():
        name, thr = f"{s.machine} {s.section}", s.threshold
        parts.append(f"<h2>{esc(s.machine)}, section {esc(s.section)}</h2>")
        if labelled:
            row = next(r for r in rows if r["machine"] == s.machine and r["section"] == s.section)
            parts.append("<table><tr>" + "".join(f"<th>{HEADERS[c]}</th>" for c in metrics.COLUMNS) + "</tr><tr>"
                         + "".join(f"<td>{metrics.percent(row[c])}</td>" for c in metrics.COLUMNS) + "</tr></table>")
        parts.append(f"<p class='muted'>{s.clips} clips; decision threshold "
                     f"{'n/a' if thr is None else f'{thr:.4g}'}</p>")
        if labelled:
            parts.append(_img(roc_png(*s.arrays(), name), name))
        parts.append(_img(histogram_png(s.edges, s.histogram, thr, name), name))
        parts.append("<div>")
        for pick in s.picks(near if labelled else 0):
            facts = f"score {pick.score:.4g}, {pick.domain or 'domain unknown'}"
            if labelled:
                facts += f", {pick.label}"
            parts.append(f"<div class='clip'><b>{esc(pick.clip_id)}</b><br><span class='muted'>{esc(pick.why)}: "
                         f"{esc(facts)}</span><br>")
            if pick.clip_id in clips:
                wave, rate = clips[pick.clip_id]
                parts.append(_img(logmel_png(wave, rate), f"log-mel spectrogram of {pick.clip_id}"))
                parts.append(f"<audio controls preload='auto' src='data:audio/flac;base64,"
                             f"{base64.b64encode(flac(wave, rate)).decode()}'></audio>")
            else:
                parts.append("<p class='muted'>audio not found in the dataset</p>")
            parts.append("</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def clips_to_show(summary: Summary, labelled: bool, near: int = 2) -> dict[str, list[str]]:
    """Machine type -> the clip ids the page shows."""
    out: dict[str, list[str]] = {}
    for s in summary.ordered():
        out.setdefault(s.machine, []).extend(p.clip_id for p in s.picks(near if labelled else 0))
    return out


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _png(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
