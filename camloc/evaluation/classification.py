"""Image-level classification AP."""

from __future__ import annotations

import numpy as np

from camloc.evaluation.inputs import EvaluationError, real_matrix


def classification_ap(scores: np.ndarray, targets: np.ndarray) -> tuple[float | None, np.ndarray]:
    """Per-class average precision of image-level scores ``(N, K)`` against 0/1 ``targets``.

    ``AP_k = (1/P_k) Σ_{i positive} precision@rank(i)`` with images ranked by descending score
    (ties keep input order); classes with no positive are NaN and left out of the mean.
    Returns ``(mean AP or None, per-class AP)``. Scores must be finite real numbers and targets
    real numbers of the same 2-D shape, else an :class:`EvaluationError`.
    """
    scores = real_matrix(scores, "classification scores").astype(np.float64)
    targets = real_matrix(targets, "classification targets", "biuf") > 0
    if scores.shape != targets.shape:
        raise EvaluationError(f"classification scores {scores.shape} and targets {targets.shape} differ in shape")
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(targets, order, axis=0)
    precision_at = np.cumsum(hits, axis=0) / np.arange(1, len(scores) + 1)[:, None]
    positives = hits.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(positives > 0, (precision_at * hits).sum(0) / positives, np.nan)
    valid = ap[~np.isnan(ap)]
    return (float(valid.mean()) if len(valid) else None), ap
