"""Pseudo-labels for self-training: a training split's image-level labels + a source's boxes → a COCO
instances file (``python -m camloc.pseudo``). :class:`PseudoRule` says which boxes are kept,
:func:`pseudo_labels` makes the document; no ground-truth box is ever read."""

from camloc.pseudo.labelling import PseudoLabelError, pseudo_labels
from camloc.pseudo.rule import DEFAULT_RULES, PseudoRule, default_rule

__all__ = ["DEFAULT_RULES", "PseudoLabelError", "PseudoRule", "default_rule", "pseudo_labels"]
