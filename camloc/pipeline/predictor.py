"""What every image-to-detections object offers (:class:`~camloc.pipeline.Localizer` from class maps,
:class:`~camloc.detector.Detector` from a detection network): image sources in, COCO-results dicts out, on
top of each one's batched ``detect``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from camloc.evaluation import Detections
from camloc.io.images import ImageSource, load_image
from camloc.io.preprocess import check_pixels, pixels_of

#: What one image may be where a batch is expected (a batch is a list or tuple of them).
SINGLE_IMAGES = (str, Path, bytes, Image.Image, np.ndarray, Tensor)


def as_batch(images: Any) -> list:
    """A batch argument of ``analyze`` / ``detect`` / ``predict_batch`` as a list: a list or tuple is the batch
    (empty: no images); one image — a path, bytes, a PIL image, an array or a ``uint8 (3, H, W)`` tensor — is a
    batch of one (never a sequence of rows or characters); anything else is a ``TypeError``."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, SINGLE_IMAGES):
        return [images]
    raise TypeError(f"pass a list of images (or one image: a path, bytes, a PIL image, an array or a uint8 (3, H, W) "
                    f"tensor); got {type(images).__name__}")


class Predictor:
    """Base of the predictors: ``detect(images, image_ids)`` (a subclass's) → :class:`Detections`; here the
    image boundary and the per-image dicts."""

    def pixels(self, images: Sequence[ImageSource | Tensor]) -> list[Tensor]:
        """Any image sources (:func:`camloc.io.images.load_image`: EXIF-upright RGB) → ``uint8 (3, H, W)`` each;
        ``uint8 (3, H, W)`` tensors (already decoded, on any device) pass through, any other tensor is an
        :class:`~camloc.io.images.ImageError` (:func:`~camloc.io.preprocess.check_pixels`)."""
        return [check_pixels(im, f"image {i}") if isinstance(im, Tensor) else pixels_of(load_image(im))
                for i, im in enumerate(images)]

    def detect(self, images: Sequence[ImageSource | Tensor], image_ids: Sequence[int] | None = None) -> Detections:
        raise NotImplementedError

    def predict_batch(self, images: Sequence[ImageSource] | ImageSource, image_ids: Sequence[int] | None = None
                      ) -> list[list[dict]]:
        """Detections for each image of a batch as COCO-results dicts (see ``detect``: a list or tuple, or one
        image alone as a batch of one); ``image_id`` only when ``image_ids`` are given."""
        images = as_batch(images)
        if image_ids is not None and len(image_ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(image_ids)} image ids")
        per_image: list[list[dict]] = [[] for _ in images]
        for detection in self.detect(images).to_dicts():
            position = detection.pop("image_id")
            head = {} if image_ids is None else {"image_id": image_ids[position]}
            per_image[position].append({**head, **detection})
        return per_image

    def predict(self, image: ImageSource, image_id: int | None = None) -> list[dict[str, Any]]:
        """Detections of one image (path, bytes, PIL image or array) as COCO-results dicts."""
        return self.predict_batch([image], None if image_id is None else [image_id])[0]
