"""The pipeline that ties the stages together: images in, detections out, one batch at a time.

* :mod:`~camloc.pipeline.localizer` — :class:`Localizer`, the one object the app, the CLIs and users call:
  preprocess → forward (every view) → maps → gating → the recipe's boxes;
* :mod:`~camloc.pipeline.analysis` — what the forward pass leaves (:class:`Analysis`, :class:`BatchAnalysis`)
  and how views are averaged;
* :mod:`~camloc.pipeline.detections` — boxes as COCO-results dicts or flat detections, and the baselines;
* :mod:`~camloc.pipeline.boxstage` — a long run's box stage: device work in the main process, host work in
  worker processes.
"""

from camloc.pipeline.analysis import Analysis, BatchAnalysis
from camloc.pipeline.localizer import Localizer, resolve_precision

__all__ = ["Analysis", "BatchAnalysis", "Localizer", "resolve_precision"]
