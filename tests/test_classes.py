import json

import pytest

from camloc.models import classes
from tests.conftest import SHARED


def test_eighty_categories_with_official_ids_and_gaps():
    assert classes.NUM_COCO_CLASSES == 80
    assert classes.COCO_CATEGORY_IDS[0] == 1 and classes.COCO_CATEGORY_IDS[-1] == 90
    assert 12 not in classes.COCO_CATEGORY_IDS and 83 not in classes.COCO_CATEGORY_IDS
    assert len(set(classes.COCO_NAMES)) == 80


def test_round_trips():
    for index, (cid, name) in enumerate(classes.COCO_CATEGORIES):
        assert classes.index_to_id(index) == cid
        assert classes.id_to_index(cid) == index
        assert classes.name_to_index(name) == index
        assert classes.id_to_name(cid) == name


def test_invalid_lookups_raise_value_error():
    for call, arg in [(classes.index_to_id, 80), (classes.id_to_index, 12), (classes.name_to_index, "unicorn")]:
        with pytest.raises(ValueError):
            call(arg)


@pytest.mark.realdata
def test_matches_shared_category_file():
    shipped = json.loads((SHARED / "coco_categories.json").read_text())
    assert [(c["id"], c["name"]) for c in shipped] == list(classes.COCO_CATEGORIES)
