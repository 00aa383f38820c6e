"""Which ImageNet-1k classes *are* each COCO class — the table behind a COCO head with no training.

Entries are torchvision's ImageNet category names (unique ones only) or index ranges for the
large contiguous families (dog breeds 151–268, birds). Indices are in torchvision's standard
1000-class order; a 1001-output head whose class 0 is "background" is shifted by one.
COCO classes absent from this table (person, giraffe, fire hydrant, ...) have no ImageNet
counterpart and are reported as unsupported rather than faked.
"""

from __future__ import annotations

from torchvision.models._meta import _IMAGENET_CATEGORIES

from camloc.models.classes import COCO_NAMES

IMAGENET_FOR_COCO: dict[str, tuple[str | range, ...]] = {
    "bicycle": ("bicycle-built-for-two", "mountain bike"),
    "car": ("beach wagon", "cab", "convertible", "jeep", "limousine", "minivan", "Model T",
            "racer", "sports car"),
    "motorcycle": ("moped", "motor scooter"),
    "airplane": ("airliner", "warplane"),
    "bus": ("school bus", "trolleybus", "minibus"),
    "train": ("bullet train", "electric locomotive", "steam locomotive", "freight car",
              "passenger car"),
    "truck": ("garbage truck", "moving van", "trailer truck", "tow truck", "fire engine", "pickup"),
    "boat": ("canoe", "catamaran", "fireboat", "gondola", "lifeboat", "liner", "pirate",
             "schooner", "speedboat", "submarine", "trimaran", "yawl", "container ship",
             "aircraft carrier"),
    "traffic light": ("traffic light",),
    "parking meter": ("parking meter",),
    "bench": ("park bench",),
    "bird": (range(7, 25), range(80, 101), range(127, 147)),
    "cat": ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"),
    "dog": (range(151, 269),),
    "horse": ("sorrel",),
    "sheep": ("ram",),
    "cow": ("ox", "water buffalo"),
    "elephant": ("tusker", "Indian elephant", "African elephant"),
    "bear": ("brown bear", "American black bear", "ice bear", "sloth bear"),
    "zebra": ("zebra",),
    "backpack": ("backpack",),
    "umbrella": ("umbrella",),
    "handbag": ("purse",),
    "tie": ("Windsor tie", "bow tie"),
    "skis": ("ski",),
    "sports ball": ("soccer ball", "tennis ball", "rugby ball", "basketball", "baseball",
                    "golf ball", "volleyball", "ping-pong ball"),
    "tennis racket": ("racket",),
    "bottle": ("beer bottle", "pill bottle", "pop bottle", "water bottle", "wine bottle"),
    "cup": ("cup", "coffee mug"),
    "spoon": ("wooden spoon",),
    "bowl": ("soup bowl", "mixing bowl"),
    "banana": ("banana",),
    "apple": ("Granny Smith",),
    "sandwich": ("cheeseburger",),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "hot dog": ("hotdog",),
    "pizza": ("pizza",),
    "chair": ("barber chair", "folding chair", "rocking chair", "throne"),
    "couch": ("studio couch",),
    "potted plant": ("pot",),
    "bed": ("four-poster",),
    "dining table": ("dining table",),
    "toilet": ("toilet seat",),
    "tv": ("television", "monitor", "screen"),
    "laptop": ("laptop", "notebook"),
    "mouse": ("mouse",),
    "remote": ("remote control",),
    "keyboard": ("computer keyboard", "typewriter keyboard"),
    "cell phone": ("cellular telephone",),
    "microwave": ("microwave",),
    "oven": ("stove",),
    "toaster": ("toaster",),
    "sink": ("washbasin",),
    "refrigerator": ("refrigerator",),
    "book": ("book jacket",),
    "clock": ("analog clock", "digital clock", "wall clock"),
    "vase": ("vase",),
    "hair drier": ("hand blower",),
    "teddy bear": ("teddy",),
}

UNSUPPORTED_COCO_CLASSES: tuple[str, ...] = tuple(n for n in COCO_NAMES if n not in IMAGENET_FOR_COCO)


def _index_of(name: str) -> int:
    hits = [i for i, cat in enumerate(_IMAGENET_CATEGORIES) if cat == name]
    if len(hits) != 1:
        raise KeyError(f"ImageNet category {name!r} matches {len(hits)} classes, expected exactly one")
    return hits[0]


def coco_groups(num_imagenet_outputs: int) -> list[list[int]]:
    """For each of the 80 COCO classes, the head rows of the ImageNet classes that are it.

    ``num_imagenet_outputs`` is 1000 (torchvision) or 1001 (class 0 = background, as TF models);
    an unsupported COCO class gets an empty list.
    """
    if num_imagenet_outputs not in (1000, 1001):
        raise ValueError(f"an ImageNet head has 1000 or 1001 outputs, this one has {num_imagenet_outputs}")
    offset = num_imagenet_outputs - 1000
    groups = []
    for name in COCO_NAMES:
        rows: list[int] = []
        for entry in IMAGENET_FOR_COCO.get(name, ()):
            rows.extend(entry if isinstance(entry, range) else [_index_of(entry)])
        groups.append([r + offset for r in rows])
    return groups
