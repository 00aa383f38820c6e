"""Faithfulness of the maps: does the classifier's confidence follow what a map says matters?

For each (image, class) pair, with ``x`` the network's input ``(3, S, S)``, ``E`` the class's map as
camloc shows it (upsampled to ``S × S``, ReLU, min-max to [0, 1]) and ``p(·)`` the class's probability
(the model's sigmoid/softmax):

* **Average Drop** and **Increase in Confidence** (Chattopadhay et al., WACV 2018):
  ``drop = max(0, p(x) − p(x ⊙ E)) / p(x)``, ``increase = 1[p(x) < p(x ⊙ E)]``; reported as means in
  percent (lower drop and higher increase are better).
* **Deletion / insertion AUC** (Petsiuk et al., RISE, BMVC 2018): positions ranked from the highest to
  the lowest value of ``E`` (stable order on ties); in ``steps`` steps of ``⌈S²/steps⌉`` positions,
  deletion replaces the top-ranked positions with a baseline (zeros of the normalised input, i.e. the
  dataset's mean colour), insertion starts from the baseline and restores them; the AUC of ``p`` over the
  fraction of positions perturbed (trapezoid rule). Lower deletion and higher insertion are better.

Every perturbed image of a batch of pairs runs through the network ``batch_size`` at a time on the
model's device; nothing is done per pixel on the host. Conventions follow torchcam's
``ClassificationMetric`` and ``DeletionInsertionMetric`` (tested equal): torchcam divides the drop by
``p(x) + 1e-7`` (camloc: by ``p(x)``, which a sigmoid or softmax never makes 0), and ranks and perturbs
the same way. pytorch-grad-cam's ``DropInConfidence`` differs by design: it measures raw logits and does
not divide by the original score. ROAD (Rong et al. 2022) is not here: its noisy linear imputation
solves one sparse linear system per image and percentile on the host, which does not batch on a device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camloc.cam import normalize_maps

#: ``score(images (n, 3, S, S)) → class probabilities (n, K)``.
Score = Callable[[Tensor], Tensor]


def _scores(score: Score, inputs: Tensor, classes: Tensor) -> Tensor:
    """Probability of ``classes[i]`` for ``inputs[i]``, one forward pass, no autograd (float64 on the host)."""
    with torch.inference_mode():
        return score(inputs).gather(1, classes[:, None].to(inputs.device))[:, 0].double().cpu()


def _original(score: Score, images: Tensor, owner: Tensor, classes: Tensor) -> Tensor:
    """``p(x)`` of every pair: one forward pass of the images, each pair reads its row."""
    with torch.inference_mode():
        probs = score(images).double().cpu()
    return probs[owner.cpu(), classes.cpu()]


def confidence_change(score: Score, images: Tensor, heatmaps: Tensor, owner: Tensor, classes: Tensor,
                      batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Per pair ``i`` (map ``heatmaps[i] (S, S)`` in [0, 1] of class ``classes[i]`` on ``images[owner[i]]``):
    ``(drop (n,), increase (n,))`` as defined in the module docstring (fractions, not percent)."""
    owner, classes = owner.long().to(images.device), classes.long().to(images.device)
    original = _original(score, images, owner, classes)
    masked = [_scores(score, images[owner[s:s + batch_size]] * heatmaps[s:s + batch_size, None].to(images.dtype),
                      classes[s:s + batch_size]) for s in range(0, len(owner), batch_size)]
    masked = torch.cat(masked) if masked else original.clone()
    return (original - masked).clamp(min=0) / original, (original < masked).double()


def insertion_deletion(score: Score, images: Tensor, heatmaps: Tensor, owner: Tensor, classes: Tensor,
                       steps: int = 16, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Per pair: ``(insertion AUC (n,), deletion AUC (n,))`` as defined in the module docstring."""
    owner, classes = owner.long().to(images.device), classes.long().to(images.device)
    n, positions = len(owner), heatmaps[0].numel() if len(owner) else 0
    if n == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    step = -(-positions // steps)
    counts = [*range(0, positions, step), positions]
    order = torch.argsort(heatmaps.reshape(n, -1).to(images.device), dim=1, descending=True, stable=True)
    ranks = torch.argsort(order, dim=1)  # rank of each position, 0 = most salient
    # jobs (pair, curve, count): every interior count for deletion (curve 0) and insertion (curve 1) of every
    # pair, then each pair's all-baseline input (the end of deletion and the start of insertion)
    interior = len(counts) - 2
    device = images.device
    pair = torch.cat([torch.arange(n, device=device).repeat_interleave(2 * interior), torch.arange(n, device=device)])
    curve = torch.cat([torch.tensor([0, 1], device=device).repeat(n * interior), torch.zeros(n, dtype=torch.long,
                                                                                               device=device)])
    count = torch.cat([torch.tensor(counts[1:-1], device=device).repeat_interleave(2).repeat(n),
                       torch.full((n,), positions, device=device)])
    values = torch.empty(len(pair), dtype=torch.float64)
    flat = images.reshape(len(images), images.shape[1], -1)
    for start in range(0, len(pair), batch_size):
        part = slice(start, start + batch_size)
        top = ranks[pair[part]] < count[part, None]  # (m, S²) the top-ranked positions
        keep = torch.where(curve[part, None] == 1, top, ~top)  # deletion keeps the rest, insertion the top
        perturbed = torch.where(keep[:, None], flat[owner[pair[part]]], 0).reshape(-1, *images.shape[1:])
        values[part] = _scores(score, perturbed, classes[pair[part]])
    original = _original(score, images, owner, classes)
    inner = values[:2 * n * interior].reshape(n, interior, 2)
    empty = values[2 * n * interior:]
    deletion = torch.cat([original[:, None], inner[..., 0], empty[:, None]], 1)
    insertion = torch.cat([empty[:, None], inner[..., 1], original[:, None]], 1)
    fractions = torch.tensor(counts, dtype=torch.float64) / positions
    return torch.trapezoid(insertion, fractions, dim=1), torch.trapezoid(deletion, fractions, dim=1)


@dataclass
class Faithfulness:
    """Accumulates the four measures over the (image, class) maps of a run; :meth:`result` averages them."""

    steps: int = 16
    batch_size: int = 32
    values: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (
        "drop", "increase", "insertion", "deletion")})

    def add(self, score: Score, images: Tensor, raw_maps: Tensor, owner: Tensor, classes: Tensor) -> None:
        """Pairs ``i``: raw map ``raw_maps[i] (h, w)`` of class ``classes[i]`` on ``images[owner[i]]``."""
        if len(owner) == 0:
            return
        heatmaps = normalize_maps(raw_maps, tuple(images.shape[-2:])).to(images.device)
        drop, increase = confidence_change(score, images, heatmaps, owner, classes, self.batch_size)
        insertion, deletion = insertion_deletion(score, images, heatmaps, owner, classes, self.steps, self.batch_size)
        for key, new in (("drop", drop), ("increase", increase), ("insertion", insertion), ("deletion", deletion)):
            self.values[key] += new.tolist()

    def add_analyses(self, localizer: Any, images: Sequence[Any], analyses: Sequence[Any],
                     classes: Sequence[Sequence[int]]) -> None:
        """One batch of a run: the maps held by each :class:`~camloc.pipeline.analysis.Analysis` for ``classes[b]`` (the
        classes present in image ``b``; a class without a map is skipped), on the Localizer's plain input."""
        from camloc.models.cammodel import probabilities

        inputs = localizer.to_tensor(images)
        pairs = [(b, k, analysis.rows([k])[0]) for b, (analysis, present) in enumerate(zip(analyses, classes))
                 for k in present if k in set(analysis.classes.tolist())]
        if not pairs:
            return
        raw = torch.stack([analyses[b].raw_maps[row] for b, _, row in pairs])
        self.add(lambda x: probabilities(localizer.model(x)[0], localizer.meta["activation"]), inputs, raw,
                 torch.tensor([b for b, _, _ in pairs]), torch.tensor([k for _, k, _ in pairs]))

    def result(self) -> dict[str, Any]:
        """``average_drop`` and ``increase_in_confidence`` in percent, the two AUCs, and ``num_maps``
        (``None`` values when no map was measured)."""
        count = len(self.values["drop"])
        mean = {k: float(np.mean(v)) if v else None for k, v in self.values.items()}
        return {"average_drop": None if mean["drop"] is None else 100 * mean["drop"],
                "increase_in_confidence": None if mean["increase"] is None else 100 * mean["increase"],
                "insertion_auc": mean["insertion"], "deletion_auc": mean["deletion"], "steps": self.steps,
                "num_maps": count}
