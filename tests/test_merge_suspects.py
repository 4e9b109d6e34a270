"""Objects flagged ``split`` once classified: large, hollow and not confidently typed
(``vfinfer.segment.review.merge_suspects``), and the hook that adds the flag and renews the
review warning before a metaphase's result is written."""

from types import SimpleNamespace

import numpy as np

from vfinfer.pipeline.metaphase import REVIEW_NOTE, flag_merge_suspects
from vfinfer.segment.review import MERGE_SOLIDITY, MIN_OBJECTS, merge_suspects, solidity


def _object(mask, name="chr_00.png"):
    return SimpleNamespace(mask=mask, box=(0, 0, mask.shape[1], mask.shape[0]), review=[],
                           name=name)


def _bar():
    return np.ones((40, 8), bool)  # a straight chromosome: solid, area 320


def _ell():
    """Two bars touching end to end at a right angle: twice a bar's area, hollow."""
    mask = np.zeros((40, 40), bool)
    mask[:, :8] = True
    mask[32:, :] = True
    return mask


def _metaphase(odd):
    return [_object(odd, "chr_01.png")] + [_object(_bar(), f"chr_{k:02d}.png")
                                          for k in range(2, MIN_OBJECTS + 2)]


def test_a_large_hollow_object_is_suspect_only_when_the_classifier_is_unsure():
    assert solidity(_ell()) < MERGE_SOLIDITY < solidity(np.ones((40, 16), bool))
    rest = [1.0] * MIN_OBJECTS
    assert merge_suspects(_metaphase(_ell()), [0.6] + rest) == [True] + [False] * MIN_OBJECTS
    assert not any(merge_suspects(_metaphase(_ell()), [0.999] + rest))  # confidently typed
    solid = np.ones((40, 16), bool)  # as large, but filled: a wide chromosome
    assert not any(merge_suspects(_metaphase(solid), [0.6] + rest))
    unsure_bars = [0.5] * (MIN_OBJECTS + 1)  # small objects are never suspects
    assert merge_suspects(_metaphase(_bar()), unsure_bars) == [False] * (MIN_OBJECTS + 1)
    few = _metaphase(_ell())[:MIN_OBJECTS - 1]
    assert merge_suspects(few, [0.1] * len(few)) == [False] * len(few)


def test_the_hook_flags_the_suspect_and_renews_the_review_warning():
    cutouts = _metaphase(_ell())
    segmented = SimpleNamespace(cutouts=cutouts,
                                notes=["only 11 chromosomes segmented: a partial metaphase",
                                       f"{REVIEW_NOTE}1 may need a join (chr_05.png); see the "
                                       "overlay"])
    cutouts[4].review = ["join"]
    result = {"chromosomes": [{"type_prob": 0.6}] + [{"type_prob": 1.0}] * MIN_OBJECTS}
    flag_merge_suspects(result, segmented)
    assert cutouts[0].review == ["split"] and cutouts[4].review == ["join"]
    assert segmented.notes == ["only 11 chromosomes segmented: a partial metaphase",
                               f"{REVIEW_NOTE}1 may need a split (chr_01.png); 1 may need a "
                               "join (chr_05.png); see the overlay"]
    flag_merge_suspects(result, segmented)  # idempotent: no second flag, one warning
    assert cutouts[0].review == ["split"] and len(segmented.notes) == 2
