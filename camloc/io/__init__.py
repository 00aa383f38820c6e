"""The image boundary and everything that reads or writes files.

* :mod:`~camloc.io.images` — ``load_image``: any image source, checked once (size, format, EXIF orientation);
* :mod:`~camloc.io.reader` — a split's files for a long run: ``uint8`` pixels or JPEG bytes decoded on the device;
* :mod:`~camloc.io.preprocess` — decoded pixels → the network's input, on the device;
* :mod:`~camloc.io.data` — COCO annotations as image-level labels and training samples;
* :mod:`~camloc.io.atomic` — files written whole or not at all.
"""
