"""The instance step (``vfinfer.segment.instances``) on the maps a perfect network gives
(``vfinfer.segment.channels.target_maps`` of a rod scene)."""

import numpy as np

from vfinfer.segment.channels import target_maps
from vfinfer.segment.instances import instances_from_maps

from helpers import SHAPE, best_matches


def test_instance_step_finds_every_rod_once_and_gives_the_crossing_to_both(scene):
    _, rods, nucleus = scene
    probs = target_maps(rods, SHAPE).astype(np.float32)  # the maps a perfect network gives
    instances = instances_from_maps(probs)
    iou = best_matches(rods, instances, SHAPE)
    assert iou.shape == (len(rods), len(instances)) == (10, 10)
    assert (iou.max(axis=1) > 0.8).all(), iou.round(2)  # every rod found
    assert ((iou > 0.5).sum(axis=0) == 1).all()  # and each instance is one rod
    crossing = rods[2] & rods[3]
    owners = [inst for inst in instances if inst.full_mask(SHAPE)[crossing].mean() > 0.9]
    assert len(owners) == 2  # the overlap pixels belong to both crossing rods
    assert not any(inst.full_mask(SHAPE)[nucleus].any() for inst in instances)


def test_a_short_end_past_a_crossing_stays_with_its_chromosome():
    from vfinfer.segment.instances import InstanceParams

    from helpers import rod

    long = rod((40, 100), (179, 100))  # its end: a stub wider than long past the other rod
    cross = rod((170, 40), (170, 160))
    probs = target_maps([long, cross], SHAPE).astype(np.float32)
    instances = instances_from_maps(probs, InstanceParams(min_area=20))
    iou = best_matches([long, cross], instances, SHAPE)
    assert len(instances) == 2, [inst.area for inst in instances]
    assert (iou.max(axis=1) > 0.8).all(), iou.round(2)  # the end is not a chromosome of its own
