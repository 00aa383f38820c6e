"""``from camloc.localize import Localizer``: the documented path of the library's one object (it lives in
:mod:`camloc.pipeline`, with the analyses it returns)."""

from camloc.pipeline.analysis import Analysis, BatchAnalysis
from camloc.pipeline.localizer import Localizer, resolve_precision

__all__ = ["Analysis", "BatchAnalysis", "Localizer", "resolve_precision"]
