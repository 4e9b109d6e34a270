"""The classical segmentation baseline (``vfinfer.segment.classical``) on a rod scene."""

from vfinfer.segment.classical import classical_instances

from helpers import SHAPE, best_matches


def test_classical_baseline_finds_the_lone_rod_and_drops_the_nucleus(scene):
    """What the baseline can do; two rods touching along their length have no neck for the
    distance transform to split (the network's touch map is there for that)."""
    image, rods, nucleus = scene
    instances = classical_instances(image, "light")
    iou = best_matches(rods, instances, SHAPE)
    assert iou[4:].max(axis=1).min() > 0.8
    assert not any((inst.full_mask(SHAPE) & nucleus).sum() > 0.5 * nucleus.sum()
                   for inst in instances)
