"""Model bundles: the trained model as a self-describing folder at a URL.

``<url>/weights.pt``   tensors only (model state and loss centres/scale), loaded with
                       ``torch.load(weights_only=True)``, so loading never runs pickled code
``<url>/bundle.json``  format version, model config, label map, sample rate, clip length, training
                       summary, companions; written last, so a bundle without it is incomplete and refused
``<url>/autoencoder/`` the companions: the autoencoder baseline trained beside a dual-stream model
``<url>/framestats/``  the frame-statistics detector,
``<url>/tonal/``       and the spectral line alarms (bundles of their own), whose scores
                       ``asd-ray score`` adds (the hybrid score)
"""

from __future__ import annotations

import io
import json

import torch
from typing import Literal

from pydantic import BaseModel

from asd_ray import storage
from asd_ray.autoencoder import AEConfig, MachineAutoEncoders
from asd_ray.framestats import FrameStats, FrameStatsConfig
from asd_ray.labels import LabelMap
from asd_ray.loss import SubClusterAdaCos
from asd_ray.model import DualStreamNet, ModelConfig
from asd_ray.storage import StorageOptions
from asd_ray.tonal import TonalConfig, TonalSpectrum

BUNDLE_VERSION = 2
AUTOENCODER_COMPANION = "autoencoder"  # the folder, inside a dual-stream bundle, of the autoencoder trained beside it
FRAMESTATS_COMPANION = "framestats"  # of its frame-statistics detector
TONAL_COMPANION = "tonal"  # and of its spectral line alarms
# what version-1 bundles, written before these model options existed, were trained with
V1_MODEL = {"fft_magnitude": "log", "level_norm": False, "spec_mean_norm": False}
# the frame statistics added in the thirtieth session, off in the bundles saved before them
PRE_IMPULSE_FRAMESTATS = {"kurtosis": False, "flux": False}


class BundleInfo(BaseModel):
    version: int = BUNDLE_VERSION
    method: Literal["scadacos", "autoencoder", "framestats", "tonal"] = "scadacos"
    model: ModelConfig
    autoencoder: AEConfig = AEConfig()
    framestats: FrameStatsConfig = FrameStatsConfig()
    tonal: TonalConfig = TonalConfig()
    labels: LabelMap
    n_subclusters: int
    sample_rate: int
    clip_samples: int
    training: dict = {}
    companions: list[str] = []  # bundles inside this one (folder names) whose scores ``score`` adds by default
    weight: float = 1.0  # this model's weight in that sum (an ensemble's members share one term: 1/N each)
    companion_weights: dict[str, float] = {}  # the companions' weights in it, where not 1

    @property
    def machines(self) -> list[str]:
        """Machine types the model was trained on (the first part of every class name)."""
        return sorted({c.split("|")[0] for c in self.labels.classes})


class BundleError(ValueError):
    pass


def weights_bytes(model: torch.nn.Module, loss_fn: SubClusterAdaCos | None) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "loss": loss_fn.state_dict() if loss_fn is not None else {}}, buf)
    return buf.getvalue()


def load_weights(data: bytes, source: str) -> dict:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusals and corrupt files alike
        raise BundleError(f"{source}: not a tensors-only weights file ({e})") from None


def build(info: BundleInfo) -> tuple[torch.nn.Module, SubClusterAdaCos | None]:
    """The model and its loss head (None for the autoencoder baseline, the frame statistics and the
    tonal detector, which score by themselves)."""
    if info.method == "autoencoder":
        return MachineAutoEncoders(info.machines, info.autoencoder, info.sample_rate), None
    if info.method == "framestats":
        return FrameStats(info.framestats, info.sample_rate), None
    if info.method == "tonal":
        return TonalSpectrum(info.tonal, info.sample_rate), None
    return DualStreamNet(info.model), SubClusterAdaCos(info.model.emb_dim, len(info.labels), info.n_subclusters)


def save_bundle(url: str, info: BundleInfo, weights: bytes, options: StorageOptions | None = None) -> str:
    storage.write_bytes_atomic(storage.join(url, "weights.pt"), weights, options)
    storage.write_bytes_atomic(storage.join(url, "bundle.json"), info.model_dump_json(indent=1).encode(), options)
    return url


def save_untrained(url: str, info: BundleInfo, options: StorageOptions | None = None) -> str:
    """Save ``info``'s model as freshly built: the detectors with nothing to train (frame statistics,
    line alarms), or an untrained model where only its cost matters (benchmarks)."""
    return save_bundle(url, info, weights_bytes(build(info)[0], None), options)


def load_bundle(url: str, options: StorageOptions | None = None,
                device: str | torch.device = "cpu") -> tuple[torch.nn.Module, SubClusterAdaCos | None, BundleInfo]:
    """The model (eval mode), its loss head (for class probabilities; None for the detectors that
    score by themselves) and the bundle's info."""
    meta_url = storage.join(url, "bundle.json")
    if not storage.exists(meta_url, options):
        raise BundleError(f"{url}: no bundle.json - not a model bundle, or an incomplete one")
    try:
        raw = json.loads(storage.read_bytes(meta_url, options))
        if isinstance(raw, dict) and raw.get("version") == 1 and isinstance(raw.get("model"), dict):
            raw = {**raw, "version": BUNDLE_VERSION, "model": {**V1_MODEL, **raw["model"]}}
        if isinstance(raw, dict) and isinstance(raw.get("framestats"), dict):
            raw = {**raw, "framestats": {**PRE_IMPULSE_FRAMESTATS, **raw["framestats"]}}
        info = BundleInfo.model_validate(raw)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{meta_url}: invalid bundle description: {e}") from None
    if info.version != BUNDLE_VERSION:
        raise BundleError(f"{meta_url}: bundle version {info.version}, this asd_ray reads {BUNDLE_VERSION}")
    state = load_weights(storage.read_bytes(storage.join(url, "weights.pt"), options), storage.join(url, "weights.pt"))
    model, loss_fn = build(info)
    try:
        model.load_state_dict(state["model"])
        if loss_fn is not None:
            loss_fn.load_state_dict(state["loss"])
    except (KeyError, RuntimeError) as e:
        raise BundleError(f"{url}: weights do not match bundle.json: {e}") from None
    return model.to(device).eval(), loss_fn.to(device).eval() if loss_fn is not None else None, info
