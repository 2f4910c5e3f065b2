"""Training-time augmentation: mixup of waveforms and labels, SpecAugment masks, feature exchange
between the two branches. All in torch, on whatever device the batch is on."""

from __future__ import annotations

import torch


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix every clip with a random partner: ``lam * a + (1 - lam) * b`` for waveforms and soft
    labels alike, ``lam ~ Beta(alpha, alpha)`` per clip (Zhang et al., ICLR 2018). ``alpha <= 0``
    leaves the batch as it is."""
    if alpha <= 0 or x.shape[0] < 2:
        return x, y
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0],)).to(x.device)
    perm = torch.randperm(x.shape[0], device=x.device)
    lx = lam.view(-1, *([1] * (x.dim() - 1)))
    return lx * x + (1 - lx) * x[perm], lam[:, None] * y + (1 - lam[:, None]) * y[perm]


def spec_augment(spec: torch.Tensor, freq_masks: int, freq_width: int, time_masks: int,
                 time_width: int) -> torch.Tensor:
    """Zero ``freq_masks`` random frequency bands of up to ``freq_width`` bins and ``time_masks``
    random time bands of up to ``time_width`` frames, independently per clip (Park et al., 2019).
    ``spec`` is ``(batch, freq, time)``; masked values are set to the clip's mean."""
    b, f, t = spec.shape
    keep = torch.ones_like(spec, dtype=torch.bool)
    for count, width, size, axis in ((freq_masks, freq_width, f, 1), (time_masks, time_width, t, 2)):
        if count <= 0 or width <= 0:
            continue
        widths = torch.randint(0, min(width, size) + 1, (b, count), device=spec.device)
        starts = (torch.rand(b, count, device=spec.device) * (size - widths + 1)).long()
        pos = torch.arange(size, device=spec.device).view(1, 1, size)
        hit = ((pos >= starts[..., None]) & (pos < (starts + widths)[..., None])).any(dim=1)  # (b, size)
        keep &= ~(hit[:, :, None] if axis == 1 else hit[:, None, :])
    fill = spec.mean(dim=(1, 2), keepdim=True)
    return torch.where(keep, spec, fill)


def feature_exchange(emb: torch.Tensor, y: torch.Tensor, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FeatEx (Wilkinghoff, "Self-supervised learning for anomalous sound detection", ICASSP 2024).

    For a random ``prob`` share of the clips the second half of the embedding (the spectrogram
    branch) is swapped for that of the clip's mirror partner in the batch. Such a pair belongs to
    neither clip's class: the labels grow to 3C classes, ``[y, 0, 0]`` for a clip as it is and
    ``[0, y/2, y_partner/2]`` for a swapped one. Telling the two apart makes each branch carry
    class information of its own, and its consistency with the other branch.
    """
    half = emb.shape[1] // 2
    swap = (torch.rand(emb.shape[0], device=emb.device) < prob)[:, None]
    out = torch.cat([emb[:, :half], torch.where(swap, emb.flip(0)[:, half:], emb[:, half:])], dim=1)
    zeros = torch.zeros_like(y)
    labels = torch.where(swap, torch.cat([zeros, y / 2, y.flip(0) / 2], 1), torch.cat([y, zeros, zeros], 1))
    return out, labels
