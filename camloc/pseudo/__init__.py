"""Pseudo-labels for self-training: a training split's image-level labels + a source's boxes → a COCO
instances file (``python -m camloc.pseudo``). :class:`PseudoRule` says which boxes are kept,
:func:`pseudo_labels` makes the document; no ground-truth box is ever read."""

from camloc.pseudo.labelling import PseudoLabelError, pseudo_labels
from camloc.pseudo.rule import PseudoRule

__all__ = ["PseudoLabelError", "PseudoRule", "pseudo_labels"]
