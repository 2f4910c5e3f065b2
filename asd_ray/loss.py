"""The Sub-Cluster AdaCos loss."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class SubClusterAdaCos(nn.Module):
    r"""Sub-Cluster AdaCos (Wilkinghoff, "Sub-Cluster AdaCos: Learning Representations for
    Anomalous Sound Detection", IJCNN 2021), built on AdaCos (Zhang et al., CVPR 2019).

    Each of the :math:`C` classes has :math:`K` sub-cluster centres :math:`w_{c,k}`. For an
    embedding :math:`x_i` the logits are the cosines :math:`\cos\theta_{i,(c,k)} =
    \langle x_i/\|x_i\|, w_{c,k}/\|w_{c,k}\| \rangle`, scaled by :math:`s`, and

    .. math::
        p_{i,c} = \sum_k \operatorname{softmax}_{(c',k')}\bigl(s\cos\theta_{i,(c',k')}\bigr)_{(c,k)},
        \qquad L = -\frac{1}{B}\sum_i \sum_c y_{i,c}\log p_{i,c}

    with soft (mixup-mixed) labels :math:`y`. The scale is adaptive, as in AdaCos: it starts at
    :math:`s_0 = \sqrt{2}\,\ln(CK-1)` and before each training step becomes

    .. math::
        s \leftarrow \frac{\ln B_{avg}}{\cos\bigl(\min(\pi/4,\ \theta_{med})\bigr)},\qquad
        B_{avg} = \frac{1}{B}\sum_i \sum_{(c,k):\,y_{i,c}=0} e^{s\cos\theta_{i,(c,k)}}

    where :math:`\theta_{med}` is the batch median of each clip's angle to its own class (to the
    nearest of the class's centres; label-weighted under mixup). Under DDP the new scale is
    averaged over workers so that all replicas use the same loss.

    What is trainable: nothing here. Following Wilkinghoff's reference implementation (centres
    created with ``trainable=False``) the centres are fixed random Glorot-uniform directions and
    ``s`` is a buffer updated by the rule above, not by gradients: learnable centres can collapse
    onto the data and make the embedding less useful for anomaly scoring. ``trainable_centres``
    switches them to parameters for experiments.
    """

    def __init__(self, emb_dim: int, n_classes: int, n_subclusters: int = 16, trainable_centres: bool = False):
        super().__init__()
        if n_classes * n_subclusters < 3:
            raise ValueError(f"Sub-Cluster AdaCos needs n_classes * n_subclusters >= 3, "
                             f"got {n_classes} x {n_subclusters}")
        self.n_classes, self.n_subclusters = n_classes, n_subclusters
        centres = nn.init.xavier_uniform_(torch.empty(n_classes * n_subclusters, emb_dim))
        if trainable_centres:
            self.centres = nn.Parameter(centres)
        else:
            self.register_buffer("centres", centres)
        self.register_buffer("scale", torch.tensor(math.sqrt(2) * math.log(n_classes * n_subclusters - 1)))

    def cosines(self, emb: torch.Tensor) -> torch.Tensor:
        """``(batch, classes, subclusters)`` cosines between embeddings and centres (float32)."""
        cos = F.normalize(emb.float(), dim=1) @ F.normalize(self.centres.float(), dim=1).T
        return cos.clamp(-1 + 1e-7, 1 - 1e-7).view(-1, self.n_classes, self.n_subclusters)

    def class_log_probs(self, emb: torch.Tensor) -> torch.Tensor:
        logits = self.scale * self.cosines(emb)
        return torch.logsumexp(logits, dim=2) - torch.logsumexp(logits.flatten(1), dim=1, keepdim=True)

    @torch.no_grad()
    def update_scale(self, cos: torch.Tensor, y: torch.Tensor) -> None:
        non_target = (y <= 0)[:, :, None].expand_as(cos)
        logits = torch.where(non_target, self.scale * cos, torch.full_like(cos, -torch.inf))
        log_b_avg = torch.logsumexp(logits.flatten(1), dim=1).logsumexp(0) - math.log(cos.shape[0])
        theta_class = (torch.acos(cos.max(dim=2).values) * y).sum(1) / y.sum(1).clamp_min(1e-8)
        theta_med = theta_class.median()
        new = log_b_avg / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(new)
            new /= dist.get_world_size()
        if torch.isfinite(new):
            self.scale.copy_(new.clamp_min(1.0))

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss for embeddings ``(batch, dim)`` and soft labels ``(batch, classes)``; in training
        mode the scale is updated from this batch first."""
        if self.training:
            self.update_scale(self.cosines(emb.detach()), y)
        return -(y * self.class_log_probs(emb)).sum(1).mean()
