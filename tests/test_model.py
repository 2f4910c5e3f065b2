import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asd_ray.augment import feature_exchange, mixup, spec_augment
from asd_ray.labels import LabelMap, class_key
from asd_ray.loss import SubClusterAdaCos
from asd_ray.model import DualStreamNet, ModelConfig, autocast

SR = 16000
SMALL = ModelConfig(emb_dim=32, n_fft=256, hop_length=128, fft_channels=[8, 16, 16], spec_channels=[8, 16],
                    freq_width=8, time_width=8)


def tones(n_per_class: int, n_classes: int, seconds: float = 0.5, seed: int = 0):
    """A separable toy problem: class c is a tone at 300 * (c + 1) Hz in noise, random level."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    phase = torch.rand(len(labels), 1, generator=g) * 6.28
    x = torch.sin(2 * math.pi * 300 * (labels[:, None] + 1) * t + phase)
    x = x + 0.5 * torch.randn(x.shape, generator=g)
    return x * (0.05 + 0.2 * torch.rand(len(labels), 1, generator=g)), labels


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.3, 10.0])
def test_embedding_shape_for_any_length(seconds):
    model = DualStreamNet().eval()
    with torch.no_grad():
        assert model(torch.randn(2, int(seconds * SR)) * 0.1).shape == (2, 256)


def test_level_norm_ignores_loudness_and_mean_norm_centres_each_frequency():
    x, _ = tones(2, 2)
    plain = DualStreamNet(SMALL.model_copy(update={"level_norm": False, "spec_mean_norm": False})).eval()
    normed = DualStreamNet(SMALL.model_copy(update={"level_norm": True, "spec_mean_norm": True})).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(x), plain(4 * x), atol=1e-3)
        torch.testing.assert_close(normed(x), normed(4 * x), atol=1e-5, rtol=1e-5)
        # at initialisation the per-frequency batch norm is the identity, so the centred spectrogram shows
        spec = normed.spec_branch.spectrogram(x)
    assert spec.mean(dim=2).abs().max() < 1e-3 < plain.spec_branch.spectrogram(x).mean(dim=2).abs().max()


def test_fft_branch_takes_log_or_linear_magnitude_or_both():
    x, labels = tones(4, 3)
    out = {}
    for magnitude in ("log", "linear"):
        torch.manual_seed(0)  # the same weights: only the input of the FFT branch differs
        model = DualStreamNet(SMALL.model_copy(update={"fft_magnitude": magnitude}))
        SubClusterAdaCos(32, 3, 4)(model(x), F.one_hot(labels, 3).float()).backward()
        assert model.fft_branch.convs[0].weight.grad.abs().sum() > 0
        with torch.no_grad():
            out[magnitude] = model.eval()(x)
    torch.testing.assert_close(out["log"][:, 16:], out["linear"][:, 16:])  # the spectrogram half is the same
    assert not torch.allclose(out["log"][:, :16], out["linear"][:, :16], atol=1e-3)
    both = DualStreamNet(SMALL.model_copy(update={"fft_magnitude": "both"}))  # the two as input channels
    SubClusterAdaCos(32, 3, 4)(both(x), F.one_hot(labels, 3).float()).backward()
    assert (both.fft_branch.convs[0].weight.grad.abs().sum(dim=(0, 2)) > 0).tolist() == [True, True]


def test_gradients_reach_both_branches():
    model, loss_fn = DualStreamNet(SMALL), SubClusterAdaCos(32, 3, 4)
    x, labels = tones(4, 3)
    loss_fn(model(x), F.one_hot(labels, 3).float()).backward()
    for name, param in [("fft", model.fft_branch.convs[0].weight), ("spec", model.spec_branch.stem[0].weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert not any(p.requires_grad for p in loss_fn.parameters())  # centres and scale are not trained


def test_loss_falls_and_classes_separate():
    torch.manual_seed(0)
    model, loss_fn = DualStreamNet(SMALL), SubClusterAdaCos(32, 4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, labels = tones(24, 4)
    y = F.one_hot(labels, 4).float()
    losses, scales = [], []
    for step in range(40):
        idx = torch.randperm(len(x))[:32]
        xb, yb = mixup(x[idx], y[idx], alpha=0.2)
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        scales.append(loss_fn.scale.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert all(math.isfinite(s) for s in scales) and len(set(round(s, 4) for s in scales)) > 5
    model.eval()
    loss_fn.eval()
    test_x, test_labels = tones(10, 4, seed=1)
    with torch.no_grad():
        emb = F.normalize(model(test_x), dim=1)
        acc = (loss_fn.class_log_probs(emb).argmax(1) == test_labels).float().mean()
    assert acc > 0.9
    same = (test_labels[:, None] == test_labels[None, :]) & ~torch.eye(len(test_labels), dtype=torch.bool)
    sims = emb @ emb.T
    assert sims[same].mean() > sims[~same & ~torch.eye(len(test_labels), dtype=torch.bool)].mean() + 0.3


def test_adaptive_scale_follows_adacos():
    loss_fn = SubClusterAdaCos(16, 4, 2)
    assert loss_fn.scale.item() == pytest.approx(math.sqrt(2) * math.log(4 * 2 - 1))
    emb = torch.randn(64, 16)
    y = F.one_hot(torch.randint(0, 4, (64,)), 4).float()
    before = loss_fn.scale.item()
    loss_fn(emb, y)
    assert math.isfinite(loss_fn.scale.item()) and loss_fn.scale.item() != before
    loss_fn.eval()
    after = loss_fn.scale.item()
    loss_fn(emb, y)
    assert loss_fn.scale.item() == after  # frozen outside training


def test_sub_cluster_probabilities_sum_per_class():
    loss_fn = SubClusterAdaCos(8, 3, 4).eval()
    log_p = loss_fn.class_log_probs(torch.randn(5, 8))
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(5))
    emb = loss_fn.centres[6:7].clone()  # exactly a centre of class 1 (centres are class-major)
    assert loss_fn.class_log_probs(emb).argmax().item() == 1


def test_eval_is_deterministic_and_training_augments():
    torch.manual_seed(0)
    model = DualStreamNet(SMALL)
    x, _ = tones(2, 2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        spec = model.spec_branch.spectrogram(x)
    masked = spec_augment(spec, 2, 8, 2, 8)
    assert not torch.equal(masked, spec) and masked.shape == spec.shape


def test_mixup_mixes_inputs_and_labels_alike():
    x = torch.arange(8.0)[:, None].repeat(1, 5)
    y = F.one_hot(torch.arange(8) % 4, 4).float()
    xm, ym = mixup(x, y, alpha=0.4)
    torch.testing.assert_close(ym.sum(1), torch.ones(8))
    lam = ym.max(1).values
    assert ((xm[:, 0] >= 0) & (xm[:, 0] <= 7)).all() and (lam >= 0.5).all()
    assert mixup(x, y, alpha=0)[0] is x


def test_feature_exchange_swaps_the_spectrogram_half_and_relabels():
    emb = torch.arange(24.0).view(6, 4)
    y = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    out, labels = feature_exchange(emb, y, prob=1.0)
    torch.testing.assert_close(out[:, :2], emb[:, :2])  # FFT halves stay
    torch.testing.assert_close(out[:, 2:], emb.flip(0)[:, 2:])  # spectrogram halves from the mirror partner
    assert labels.shape == (6, 9) and labels[:, :3].sum() == 0  # none of the original classes
    torch.testing.assert_close(labels[:, 3:6], y / 2)
    torch.testing.assert_close(labels[:, 6:], y.flip(0) / 2)
    kept, labels = feature_exchange(emb, y, prob=0.0)
    torch.testing.assert_close(kept, emb)
    torch.testing.assert_close(labels, torch.cat([y, torch.zeros(6, 6)], 1))
    torch.manual_seed(0)
    swapped = (feature_exchange(emb, y, prob=0.5)[1][:, 3:].sum(1) > 0).float().mean()
    assert 0 < swapped < 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_matches_float32_on_cuda():
    """What the product does: bf16 autocast on CUDA only (``model.autocast``), with the default
    two-channel FFT input."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    model, loss_fn = DualStreamNet(SMALL).to(device).eval(), SubClusterAdaCos(32, 3, 4).to(device)
    x, labels = tones(3, 3)
    x, labels = x.to(device), labels.to(device)
    with torch.no_grad():
        ref = model(x)
        with autocast(device):
            low = model(x)
    assert F.cosine_similarity(ref, low.float()).min() > 0.98
    model.train()
    with autocast(device):
        loss = loss_fn(model(x), F.one_hot(labels, 3).float())
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_no_job_autocasts_on_the_cpu(tmp_path):
    """torch 2.13's CPU bf16 Conv1d (2 input channels, kernel 256) is wrong through oneDNN on CPUs
    with AMX: training and scoring never enable CPU autocast."""
    from asd_ray.bundle import BundleInfo, save_bundle, weights_bytes
    from asd_ray.embedder import Embedder

    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    info = BundleInfo(model=SMALL, labels=LabelMap(classes=["a", "b"]), n_subclusters=2, sample_rate=SR,
                      clip_samples=SR // 2)
    save_bundle(str(tmp_path / "b"), info, weights_bytes(DualStreamNet(SMALL), SubClusterAdaCos(32, 2, 2)))
    embedder = Embedder(str(tmp_path / "b"), {}, use_gpu=False)
    seen = []
    embedder.models[0].register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    x, _ = tones(1, 2)
    batch = {"clip_id": np.array(["fan/test/a", "fan/test/b"], object), "machine": np.array(["fan"] * 2, object),
             "section": np.array(["00"] * 2, object), "domain": np.array([None, None], object),
             "label": np.array([None, None], object), "audio": (x.numpy() * 32767).astype(np.int16)}
    out = embedder(batch)
    assert seen == [False] and out.num_rows == 2 and out["domain"].null_count == 2


@pytest.mark.filterwarnings("ignore:.*meta parameter")  # copying weights into meta tensors is a no-op, by design
def test_resume_puts_optimizer_state_on_the_models_device():
    """The restored optimizer state follows the parameters' device (here the meta device stands in
    for a GPU): the model is moved first, then the optimizer built and its state loaded."""
    from asd_ray.train import restore

    torch.manual_seed(0)
    model, loss_fn = DualStreamNet(SMALL), SubClusterAdaCos(32, 3, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, labels = tones(2, 3)
    loss_fn(model(x), F.one_hot(labels, 3).float()).backward()
    opt.step()
    state = {"model": model.state_dict(), "loss": loss_fn.state_dict(), "featex": {},
             "optimizer": opt.state_dict(), "epoch": 4}
    device = torch.device("meta")
    moved, moved_loss = DualStreamNet(SMALL).to(device), SubClusterAdaCos(32, 3, 4).to(device)
    moved_opt = torch.optim.AdamW(moved.parameters(), lr=1e-3)
    assert restore(state, moved, moved_loss, None, moved_opt) == 5
    tensors = [v for s in moved_opt.state.values() for k, v in s.items() if k != "step"]
    assert tensors and all(t.device == device for t in tensors)
    assert moved_loss.scale.device == device


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_backward_matches_cpu():
    torch.manual_seed(0)
    model, loss_fn = DualStreamNet(SMALL).eval(), SubClusterAdaCos(32, 3, 4)
    x, labels = tones(3, 3)
    with torch.no_grad():
        ref = model(x)
    model.cuda()
    with torch.no_grad():
        torch.testing.assert_close(model(x.cuda()).cpu(), ref, rtol=1e-3, atol=1e-3)
    model.train()
    loss_fn.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = loss_fn(model(x.cuda()), F.one_hot(labels, 3).float().cuda())
    loss.backward()
    assert torch.isfinite(loss)


def test_label_map_is_stable_and_names_unknown_classes():
    keys = [("fan", "00", "speed=900"), ("pump", "00", "load=40,speed=1200"), ("fan", "00", "speed=900")]
    a, b = LabelMap.from_clips(keys), LabelMap.from_clips(reversed(keys))
    assert a.classes == b.classes and len(a) == 2
    assert a.index("pump", "00", "load=40,speed=1200") == 1
    with pytest.raises(KeyError, match="fan\\|01\\|speed=900"):
        a.index("fan", "01", "speed=900")
    assert LabelMap.model_validate_json(a.model_dump_json()).classes == a.classes


def test_classes_include_the_domain_where_attributes_are_hidden():
    """DCASE 2024/2025 hide the attributes of several machine types (noAttribute): with the domain
    in the class key a section's source and target clips are still two classes."""
    clips = [("valve", "00", "source", ""), ("valve", "00", "target", ""), ("valve", "00", None, "")]
    with_domain = LabelMap.from_clips(class_key(*c, with_domain=True) for c in clips)
    assert with_domain.classes == ["valve|00|source|", "valve|00|target|", "valve|00|unknown|"]
    assert with_domain.index(*class_key("valve", "00", "target", "", True)) == 1
    without = LabelMap.from_clips(class_key(*c, with_domain=False) for c in clips)
    assert without.classes == ["valve|00|"]  # as runs before it: one class, and so no auxiliary task at all


def test_version_1_bundle_keeps_the_features_it_was_trained_with(tmp_path):
    import json

    from asd_ray.bundle import V1_MODEL, BundleInfo, load_bundle, save_bundle, weights_bytes

    old = SMALL.model_copy(update=V1_MODEL)
    torch.manual_seed(0)
    model = DualStreamNet(old).eval()
    info = BundleInfo(model=old, labels=LabelMap(classes=["a", "b"]), n_subclusters=2, sample_rate=SR,
                      clip_samples=SR)
    save_bundle(str(tmp_path), info, weights_bytes(model, SubClusterAdaCos(32, 2, 2)))
    meta = json.loads((tmp_path / "bundle.json").read_text())
    meta["version"] = 1  # as written before the options existed
    meta["model"] = {k: v for k, v in meta["model"].items() if k not in V1_MODEL}
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    loaded, _, loaded_info = load_bundle(str(tmp_path))
    assert {k: getattr(loaded_info.model, k) for k in V1_MODEL} == V1_MODEL
    x, _ = tones(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
