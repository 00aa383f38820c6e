"""camloc: weakly-supervised object localisation with class activation maps."""

__version__ = "0.1.0"
