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
from asd_ray.score_output import sections  # noqa: E402

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}.clip{display:inline-block;
margin:6px;padding:6px;border:1px solid #ddd;vertical-align:top;width:330px}.clip img{width:320px}
.clip audio{width:320px}.clip b{word-break:break-all}.muted{color:#666;font-size:90%}"""
HEADERS = {"auc_source": "AUC (source)", "auc_target": "AUC (target)", "pauc": "pAUC"}


def threshold(score: np.ndarray, decision: np.ndarray) -> float | None:
    """The decision threshold, from the decisions the scoring job made (between the highest score
    it called normal and the lowest it called anomalous)."""
    normal, anomalous = score[decision == 0], score[decision == 1]
    if len(normal) and len(anomalous):
        return float((normal.max() + anomalous.min()) / 2)
    return float(normal.max()) if len(normal) else float(anomalous.min()) if len(anomalous) else None


def pick_clips(score: np.ndarray, label: np.ndarray | None, thr: float | None, top: int,
               near: int) -> list[tuple[int, str]]:
    """``(index, why shown)``: the highest scores, then (labelled) the normal clips closest to the threshold."""
    order = np.argsort(-score)[:top]
    picked = [(int(i), f"top {k + 1}") for k, i in enumerate(order)]
    if label is not None and thr is not None and near:
        normal = np.flatnonzero(label == "normal")
        closest = normal[np.argsort(np.abs(score[normal] - thr))]
        seen = {i for i, _ in picked}
        picked += [(int(i), "normal near threshold") for i in closest if int(i) not in seen][:near]
    return picked


def shown(table: dict, sel: np.ndarray, labelled: bool, top: int, near: int) -> list[tuple[int, str, str]]:
    """``(row, clip id, why shown)`` of one section's clips on the page (``sel``: its rows)."""
    rows = np.flatnonzero(sel)
    score = table["score"][rows]
    thr = threshold(score, table["decision"][rows])
    picked = pick_clips(score, table["label"][rows] if labelled else None, thr, top, near)
    return [(int(rows[i]), table["clip_id"][int(rows[i])].as_py(), why) for i, why in picked]


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


def section_plots(score: np.ndarray, domain: np.ndarray, label: np.ndarray | None, thr: float | None,
                  title: str) -> list[bytes]:
    images = []
    if label is not None:
        y = (label == "anomaly").astype(int)
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        for dom in ("source", "target"):
            sel = (domain == dom) | (y == 1)
            if len(set(y[sel].tolist())) == 2:
                fpr, tpr, _ = roc_curve(y[sel], score[sel])
                ax.plot(fpr, tpr, label=dom)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.axvline(metrics.MAX_FPR, color="grey", lw=0.5)
        ax.set(title=f"{title}: ROC", xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=7)
        images.append(_png(fig))
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    bins = np.linspace(score.min(), score.max() + 1e-9, 30)
    groups = ([(f"{d} {lab}", (domain == d) & (label == lab)) for d in ("source", "target")
               for lab in ("normal", "anomaly")] if label is not None
              else [(d or "unknown domain", domain == d) for d in sorted(set(domain.tolist()), key=str)])
    for name, sel in groups:
        if sel.any():
            ax.hist(score[sel], bins=bins, alpha=0.5, label=name, histtype="stepfilled")
    if thr is not None:
        ax.axvline(thr, color="black", lw=1, ls="--", label="threshold")
    ax.set(title=f"{title}: scores", xlabel="anomaly score", ylabel="clips")
    ax.legend(fontsize=7)
    images.append(_png(fig))
    return images


def render(table: dict[str, np.ndarray], rows: list[dict] | None, clips: dict[str, tuple[np.ndarray, int]],
           title: str, summary: str, top: int = 3, near: int = 2) -> str:
    """The page. ``table``: the scores as ``score_output.score_columns``; ``rows``: the per-section metrics (None for
    an unlabelled set); ``clips``: audio of the clips :func:`clips_to_show` named."""
    esc = html.escape
    labelled = rows is not None
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><p>{esc(summary)}</p>"]
    for (machine, section), sel in sections(table):
        score, domain = table["score"][sel], table["domain"][sel]
        label = table["label"][sel] if labelled else None
        thr = threshold(score, table["decision"][sel])
        parts.append(f"<h2>{esc(machine)}, section {esc(section)}</h2>")
        if labelled:
            row = next(r for r in rows if r["machine"] == machine and r["section"] == section)
            parts.append("<table><tr>" + "".join(f"<th>{HEADERS[c]}</th>" for c in metrics.COLUMNS) + "</tr><tr>"
                         + "".join(f"<td>{metrics.percent(row[c])}</td>" for c in metrics.COLUMNS) + "</tr></table>")
        parts.append(f"<p class='muted'>{sel.sum()} clips; decision threshold "
                     f"{'n/a' if thr is None else f'{thr:.4g}'}</p>")
        parts += [_img(png, f"{machine} {section}") for png in section_plots(score, domain, label, thr,
                                                                              f"{machine} {section}")]
        parts.append("<div>")
        for i, clip, why in shown(table, sel, labelled, top, near):
            facts = f"score {table['score'][i]:.4g}, {table['domain'][i] or 'domain unknown'}"
            if labelled:
                facts += f", {table['label'][i]}"
            parts.append(f"<div class='clip'><b>{esc(clip)}</b><br><span class='muted'>{esc(why)}: {esc(facts)}"
                         "</span><br>")
            if clip in clips:
                wave, rate = clips[clip]
                parts.append(_img(logmel_png(wave, rate), f"log-mel spectrogram of {clip}"))
                parts.append(f"<audio controls preload='auto' src='data:audio/flac;base64,"
                             f"{base64.b64encode(flac(wave, rate)).decode()}'></audio>")
            else:
                parts.append("<p class='muted'>audio not found in the dataset</p>")
            parts.append("</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def clips_to_show(table: dict[str, np.ndarray], labelled: bool, top: int = 3,
                  near: int = 2) -> dict[str, list[str]]:
    """Machine type -> the clip ids the page shows."""
    out: dict[str, list[str]] = {}
    for (machine, _), sel in sections(table):
        out.setdefault(machine, []).extend(clip for _, clip, _ in shown(table, sel, labelled, top, near))
    return out


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _png(fig, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
