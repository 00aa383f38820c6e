"""The model side: any torchvision GAP classifier as a :class:`CamModel`, its metadata, checkpoints and weights.

* :mod:`~camloc.models.families` — where each torchvision family keeps its feature layer and head;
* :mod:`~camloc.models.cammodel` — :class:`CamModel` (logits and feature map from one pass, the CAM identity),
  the COCO head derived from an ImageNet one;
* :mod:`~camloc.models.meta` — the metadata fields camloc reads, checked once;
* :mod:`~camloc.models.building` — new models (random, ImageNet or a checkpoint's backbone);
* :mod:`~camloc.models.checkpoints` — read (``weights_only=True``), check, load, save;
* :mod:`~camloc.models.pretrained`, :mod:`~camloc.models.imagenet_coco`, :mod:`~camloc.models.classes` —
  torchvision's weights, the ImageNet→COCO class map, COCO's names and ids.
"""

from camloc.models.building import build_model, imagenet_state_dict
from camloc.models.cammodel import CamModel, GroupedImageNetHead, derive_coco_head, probabilities
from camloc.models.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_torch_save,
    check_state_dict,
    checkpoint_payload,
    load_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from camloc.models.families import FAMILIES, Family, ModelError, build_torchvision, dilation_kwargs, family_of
from camloc.models.meta import (
    ACTIVATIONS,
    DEFAULT_INPUT_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    complete_meta,
)

__all__ = ["ACTIVATIONS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "DEFAULT_INPUT_SIZE", "FAMILIES", "IMAGENET_MEAN",
           "IMAGENET_STD", "MAX_INPUT_SIZE", "MIN_INPUT_SIZE", "CamModel", "Family", "GroupedImageNetHead",
           "ModelError", "atomic_torch_save", "build_model", "build_torchvision", "check_state_dict",
           "checkpoint_payload", "complete_meta", "derive_coco_head", "dilation_kwargs", "family_of",
           "imagenet_state_dict", "load_checkpoint", "load_model", "probabilities", "read_checkpoint",
           "save_checkpoint"]
