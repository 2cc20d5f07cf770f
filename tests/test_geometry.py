"""fastforward.pipeline.geometry: boxes, keypoints and points through a sample's
crop, resize and flip, against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest
from reference import map_box

from fastforward.pipeline import geometry
from fastforward.pipeline.geometry import GEOMETRY


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n, GEOMETRY)
    out["height"], out["width"] = rng.integers(20, 200, n), rng.integers(20, 200, n)
    out["crop_height"] = [rng.integers(1, h + 1) for h in out["height"]]
    out["crop_width"] = [rng.integers(1, w + 1) for w in out["width"]]
    out["y"] = [rng.integers(0, h - c + 1) for h, c in zip(out["height"], out["crop_height"],
                                                            strict=True)]
    out["x"] = [rng.integers(0, w - c + 1) for w, c in zip(out["width"], out["crop_width"],
                                                            strict=True)]
    out["out_height"], out["out_width"] = rng.integers(8, 300, n), rng.integers(8, 300, n)
    out["flip"] = rng.integers(0, 2, n)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_map_boxes_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rows(rng, 6)
    corners = rng.uniform(-20, 220, (6, 9, 2, 2))
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2)], axis=-1)
    boxes = boxes[..., [0, 1, 2, 3]]  # x0 y0 x1 y1
    mapped, visible = geometry.map_boxes(g, boxes)
    for i in range(6):
        for j in range(9):
            want, fraction = map_box(tuple(boxes[i, j]), *(int(g[i][k]) for k in (
                "y", "x", "crop_height", "crop_width", "out_height", "out_width")),
                bool(g[i]["flip"]))
            np.testing.assert_allclose(mapped[i, j], want, atol=1e-9)
            assert visible[i, j] == pytest.approx(fraction)


def test_a_mirror_keeps_or_drops_a_box_as_no_mirror_does() -> None:
    """The visible fraction was measured after the mirror, whose ``ow - x`` rounds
    otherwise: a box exactly on min_visibility (2/5 of it in a 41x66 image's
    centre crop to 56x72) was kept unmirrored and dropped mirrored (51 of
    155,880 random boxes on the line disagreed)."""
    g = np.zeros(2, GEOMETRY)
    g[0] = (41, 66, 3, 15, 35, 35, 56, 72, 0)
    g[1] = (41, 66, 3, 15, 35, 35, 56, 72, 1)
    box = np.array([[[0, 12, 25, 19]], [[0, 12, 25, 19]]], np.float64)
    _, visible = geometry.map_boxes(g, box)
    assert visible[0, 0] == visible[1, 0] >= 0.4
    rng = np.random.default_rng(7)
    g = rows(rng, 400)
    g["flip"] = 0
    mirrored = g.copy()
    mirrored["flip"] = 1
    corners = rng.integers(-20, 220, (400, 12, 2, 2)).astype(np.float64)
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2)], axis=-1)
    plain, seen = geometry.map_boxes(g, boxes)
    flipped, seen_flipped = geometry.map_boxes(mirrored, boxes)
    np.testing.assert_array_equal(seen, seen_flipped)  # bit for bit
    ow = mirrored["out_width"].astype(np.float64)[:, None]
    np.testing.assert_allclose(flipped[..., 0], ow - plain[..., 2], atol=1e-9)
    np.testing.assert_allclose(flipped[..., 2], ow - plain[..., 0], atol=1e-9)


def test_a_box_on_the_window_edges_lands_exactly_on_the_output_edges() -> None:
    """Scaled by the ratio of output to window, 313 of 5,000 such boxes (in whole
    source pixels) landed an ulp off the output's edges, and mirrored, 3.6e-15
    from 0 where 0 was due."""
    g = rows(np.random.default_rng(3), 5000)
    window = np.stack([g["x"], g["y"], g["x"] + g["crop_width"], g["y"] + g["crop_height"]],
                      axis=-1).astype(np.float64)[:, None, :]
    edges = np.stack([np.zeros(5000), np.zeros(5000), g["out_width"], g["out_height"]],
                     axis=-1)[:, None, :]
    mapped, visible = geometry.map_boxes(g, window)
    np.testing.assert_array_equal(mapped, edges)  # bit for bit, mirrored or not
    np.testing.assert_array_equal(visible, 1.0)
    corners = geometry.map_xy(g, window.reshape(5000, 2, 2))
    np.testing.assert_array_equal(np.sort(corners, axis=1), edges.reshape(5000, 2, 2))
    # a keypoint on a window corner stays visible (286 of 10,000 landed an ulp past
    # the output's edge, and were marked not visible)
    keypoints = np.concatenate([window.reshape(5000, 1, 2, 2),
                                np.full((5000, 1, 2, 1), 2.0)], axis=-1)
    np.testing.assert_array_equal(geometry.map_keypoints(g, keypoints)[..., 2], 2.0)
    for i in range(0, 5000, 97):
        ys, xs = geometry.map_points(g[i], window[i, 0, [1, 3]], window[i, 0, [0, 2]])
        np.testing.assert_array_equal(ys, [0, g[i]["out_height"]])
        np.testing.assert_array_equal(np.sort(xs), [0, g[i]["out_width"]])


@pytest.mark.parametrize("box_format", geometry.BOX_FORMATS)
def test_box_formats_round_trip_and_map_alike(box_format: str) -> None:
    rng = np.random.default_rng(1)
    g = rows(rng, 3)
    xyxy = np.sort(rng.uniform(0, 100, (3, 4, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(3, 4, 4)
    stored = geometry.from_xyxy(xyxy, box_format)
    np.testing.assert_allclose(geometry.to_xyxy(stored, box_format), xyxy)
    mapped, _ = geometry.map_boxes(g, stored, box_format)
    plain, _ = geometry.map_boxes(g, xyxy)
    np.testing.assert_allclose(geometry.to_xyxy(mapped, box_format), plain, atol=1e-9)


def test_points_follow_the_source_pixel_centres() -> None:
    g = np.zeros(1, GEOMETRY)
    g[0] = (100, 100, 10, 20, 50, 40, 100, 80, 1)  # window x 20..60, y 10..60, to 80 x 100
    # the centre of source pixel (y=10, x=20), the window's first: output pixel (0, 79)'s
    p = geometry.map_xy(g, np.array([[[20.5, 10.5]]]))
    np.testing.assert_allclose(p[0, 0], [80 - 0.5 * 2, 0.5 * 2])
    k = geometry.map_keypoints(g, np.array([[[[20.5, 10.5, 2], [5, 5, 2]]]]))
    np.testing.assert_allclose(k[0, 0, :, 2], [2, 0])  # the second is outside the window


@pytest.mark.parametrize("flip", [0, 1])
def test_a_keypoint_on_the_border_is_visible_mirrored_or_not(flip: int) -> None:
    # the whole 10 x 10 image, unresized: keypoints on each of its four edges,
    # one just past the right edge, and one with a NaN coordinate
    g = np.zeros(1, GEOMETRY)
    g[0] = (10, 10, 0, 0, 10, 10, 10, 10, flip)
    points = np.array([[[[0, 5, 2], [10, 5, 2], [5, 0, 2], [5, 10, 2], [10.001, 5, 2],
                         [np.nan, 5, 2]]]])
    k = geometry.map_keypoints(g, points)
    np.testing.assert_array_equal(k[0, 0, :, 2], [2, 2, 2, 2, 0, 0])
    np.testing.assert_array_equal(k[0, 0, :4, 0], [10, 0, 5, 5] if flip else [0, 10, 5, 5])
