"""Eq. 5 box decode and the crop between G-Net and L-Net."""

import cv2
import numpy as np
import pytest

from vfinfer.pipeline.crop import crop_and_resize, decode_boxes


def test_decode_boxes_eq5_by_hand():
    # T1 = 64, T2 = 128 (paper). u = (0, 0, 0): centre 64, half side 32 -> [32, 32, 96, 96].
    # u = (1, 0.5, 1): centre x 192, y 128, half side 64 -> [128, 64, 256, 192].
    boxes = decode_boxes(np.array([[0, 0, 0], [1, 0.5, 1]], np.float32), 64, 128)
    np.testing.assert_allclose(boxes, [[32, 32, 96, 96], [128, 64, 256, 192]])


def test_boxes_stay_inside_the_g_input():
    u = np.random.default_rng(0).random((1000, 3)).astype(np.float32)
    boxes = decode_boxes(u, 64, 128)
    assert boxes.min() >= 0 and boxes.max() <= 256
    sides = boxes[:, 2] - boxes[:, 0]
    assert sides.min() >= 64 and sides.max() <= 128  # side 2 t_l in [T1, 2 T1]


def test_whole_pixel_box_equals_slice_then_bilinear_resize():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 1, 128, 128)).astype(np.float32)
    for box, out in (([20, 30, 84, 94], 64), ([10, 12, 50, 52], 64), ([0, 0, 128, 128], 32)):
        got = crop_and_resize(image, np.array([box], np.float32), out)[0, 0]
        x0, y0, x1, y1 = box
        expected = cv2.resize(image[0, 0, y0:y1, x0:x1], (out, out),
                              interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_crop_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    from vfinfer_export.varifocal_ops import crop_and_resize_torch

    rng = np.random.default_rng(2)
    images = rng.normal(size=(5, 1, 128, 128)).astype(np.float32)
    boxes = decode_boxes(rng.random((5, 3)).astype(np.float32), 32, 64)
    ours = crop_and_resize(images, boxes, 64)
    theirs = crop_and_resize_torch(torch.from_numpy(images), torch.from_numpy(boxes), 64)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-5)


def test_crop_is_continuous_in_the_box():
    images = np.random.default_rng(3).normal(size=(1, 1, 64, 64)).astype(np.float32)
    a = crop_and_resize(images, np.array([[10.0, 10, 40, 40]], np.float32), 32)
    b = crop_and_resize(images, np.array([[10.0001, 10, 40.0001, 40]], np.float32), 32)
    assert np.abs(a - b).max() < 1e-2


def test_bad_shapes():
    with pytest.raises(ValueError, match="N x 3"):
        decode_boxes(np.zeros((2, 4)), 64, 128)
    with pytest.raises(ValueError, match="boxes"):
        crop_and_resize(np.zeros((2, 1, 8, 8)), np.zeros((3, 4)), 4)
