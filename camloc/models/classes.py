"""The 80 COCO object categories: contiguous index (0..79) ↔ COCO category id (1..90, with gaps) ↔ name.

The order is the official one of ``instances_*2017.json``; a model with an 80-output COCO head
emits its logits in this order, so output ``k`` is category ``COCO_CATEGORY_IDS[k]``.
"""

from __future__ import annotations

COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"),
    (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"),
    (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"),
    (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"),
    (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"),
    (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"),
    (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"),
    (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"),
    (90, "toothbrush"),
)  # fmt: skip

NUM_COCO_CLASSES = len(COCO_CATEGORIES)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(cid for cid, _ in COCO_CATEGORIES)
COCO_NAMES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)

_INDEX_BY_ID = {cid: i for i, cid in enumerate(COCO_CATEGORY_IDS)}
_INDEX_BY_NAME = {name: i for i, name in enumerate(COCO_NAMES)}


def index_to_id(index: int) -> int:
    """Contiguous index 0..79 → COCO category id."""
    if not 0 <= index < NUM_COCO_CLASSES:
        raise ValueError(f"COCO class index must be in 0..{NUM_COCO_CLASSES - 1}, got {index}")
    return COCO_CATEGORY_IDS[index]


def id_to_index(category_id: int) -> int:
    """COCO category id → contiguous index 0..79."""
    try:
        return _INDEX_BY_ID[int(category_id)]
    except KeyError:
        raise ValueError(f"{category_id} is not a COCO category id (valid: 1..90 with gaps)") from None


def name_to_index(name: str) -> int:
    """COCO category name (e.g. ``"teddy bear"``) → contiguous index 0..79."""
    try:
        return _INDEX_BY_NAME[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a COCO category name") from None


def id_to_name(category_id: int) -> str:
    """COCO category id → name."""
    return COCO_NAMES[id_to_index(category_id)]


def is_coco_head(class_names: list[str] | tuple[str, ...]) -> bool:
    """True when ``class_names`` are exactly COCO's 80 names in the official order."""
    return tuple(class_names) == COCO_NAMES
