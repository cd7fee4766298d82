"""A unit's preprocessor resolution (imaging/control.py's control_map, imaging/detectmap.py): the
map made from the image as given at A1111's Preprocessor Resolution or Pixel Perfect size, then
fitted to the picture by the extension's map resize, against known numbers and OpenCV's own
resizes; `generate --control-resolution` runs exactly that map and changes the picture."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sdcli.imaging.control import check_resolution, control_map
from sdcli.imaging.detectmap import fit_map, hq_resize, line_maxima, pixel_perfect_resolution, thin
from sdcli.util.errors import UsageError
from tests.controlnets import moved, sdcli_controlnet


def shapes(height=96, width=128) -> np.ndarray:
    image = np.full((height, width, 3), 40, np.uint8)
    cv2.circle(image, (50, 48), 30, (220, 180, 60), -1)
    cv2.rectangle(image, (80, 10), (120, 70), (30, 200, 230), -1)
    return image


def test_many_colours_resize_by_area_shrinking_and_bicubic_growing():
    ramp = np.linspace(0, 255, 40 * 30 * 3).reshape(30, 40, 3).astype(np.uint8)
    np.testing.assert_array_equal(hq_resize(ramp, 80, 60), cv2.resize(ramp, (80, 60), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_array_equal(hq_resize(ramp, 20, 15), cv2.resize(ramp, (20, 15), interpolation=cv2.INTER_AREA))
    assert hq_resize(ramp, 40, 30) is ramp


def test_a_few_colours_resize_by_nearest_and_keep_their_colours():
    seg = np.zeros((30, 40, 3), np.uint8)
    colours = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]
    for i, colour in enumerate(colours):
        seg[:, i * 8:(i + 1) * 8] = colour
    out = hq_resize(seg, 57, 43)
    np.testing.assert_array_equal(out, cv2.resize(seg, (57, 43), interpolation=cv2.INTER_NEAREST))
    assert {tuple(c) for c in out.reshape(-1, 3)} == set(colours)


def test_one_pixel_edges_stay_one_pixel_wide():
    """A one-pixel horizontal line, scaled up 2x: still black and white, one pixel wide in every
    column it crosses (bicubic alone gives a band of greys three pixels wide)."""
    edge = np.zeros((32, 32, 3), np.uint8)
    edge[15, 4:28] = 255
    out = hq_resize(edge, 64, 64)
    assert set(np.unique(out)) == {0, 255} and np.array_equal(out[:, :, 0], out[:, :, 2])
    white = out[:, :, 0] > 0
    per_column = white.sum(axis=0)
    assert per_column.max() == 1 and per_column.sum() >= 40  # (the line's ends may be pruned)
    band = (cv2.resize(edge, (64, 64), interpolation=cv2.INTER_CUBIC)[:, :, 0] > 0).sum(axis=0)
    assert band.max() >= 3


def test_a_filled_black_and_white_map_is_thresholded_not_thinned():
    blob = np.zeros((32, 32, 3), np.uint8)
    blob[8:24, 8:24] = 255
    out = hq_resize(blob, 64, 64)
    assert set(np.unique(out)) == {0, 255}
    assert abs(int((out[:, :, 0] > 0).sum()) - 32 * 32) <= 64  # the square at twice the side, not a thin outline


def test_thin_and_line_maxima_known_cases():
    thick = np.zeros((20, 30), np.uint8)
    thick[8:11, 3:27] = 255  # 3 pixels thick
    thinned = thin(thick)
    assert (thinned > 0).sum(axis=0).max() == 1 and (thinned[9] > 0).sum() >= 18
    pit = np.full((5, 5), 9, np.uint8)
    pit[2, 2], pit[1, 2] = 1, 4  # (2, 2): below a neighbour in all four directions; (1, 2): the largest of none
    kept = line_maxima(pit)
    assert kept[2, 2] == 0 and kept[1, 2] == 0 and (kept[0] == 9).all() and kept[2, 1] == 9
    slope = np.tile(np.arange(0, 70, 10, dtype=np.uint8), (7, 1))  # rises to the right: flat up and down, so kept
    np.testing.assert_array_equal(line_maxima(slope), slope)


def test_fit_map_geometry_and_pixel_perfect():
    ramp = np.linspace(0, 255, 96 * 128 * 3).reshape(96, 128, 3).astype(np.uint8)
    covered = cv2.resize(ramp, (85, 64), interpolation=cv2.INTER_AREA)  # k = max(64/96, 64/128), 128 * k = 85.3
    np.testing.assert_array_equal(fit_map(ramp, 64, 64, "crop-and-resize"), covered[:, 10:74])
    filled = fit_map(ramp, 64, 64, "resize-and-fill")  # k = min: 64 x 48 in the middle, the border's median around
    np.testing.assert_array_equal(filled[8:56], cv2.resize(ramp, (64, 48), interpolation=cv2.INTER_AREA))
    border = np.concatenate([ramp[0], ramp[-1], ramp[:, 0], ramp[:, -1]])
    assert (filled[:8] == np.median(border, axis=0).astype(np.uint8)).all()
    assert fit_map(ramp, 50, 70, "just-resize").shape == (70, 50, 3)
    assert pixel_perfect_resolution(96, 128, 512, 512, "crop-and-resize") == 512
    assert pixel_perfect_resolution(96, 128, 512, 512, "resize-and-fill") == 384
    assert pixel_perfect_resolution(96, 128, 768, 512, "just-resize") == 768


def test_control_map_at_a_resolution():
    """canny at processor_res 64: the image's short side scaled to 64, canny there, the map fitted
    to the picture; another resolution (or the picture's own) gives another map."""
    image = shapes(192, 256)
    small = cv2.resize(image, (85, 64), interpolation=cv2.INTER_AREA)
    edges = np.repeat(cv2.Canny(np.pad(small, ((0, 0), (0, 43), (0, 0)), mode="edge"), 100, 200)[:, :85, None], 3,
                      axis=2)  # (canny runs on the image padded to multiples of 64, as the extension's)
    at64 = control_map(image, "canny", 48, 48, "crop-and-resize", "64")
    np.testing.assert_array_equal(at64, fit_map(edges, 48, 48, "crop-and-resize"))
    picture = control_map(image, "canny", 48, 48, "crop-and-resize")
    assert at64.shape == picture.shape == (48, 48, 3) and (at64 != picture).any()
    assert (control_map(image, "canny", 48, 48, "crop-and-resize", "256") != at64).any()
    perfect = control_map(image, "canny", 64, 64, "crop-and-resize", "pixel-perfect")  # short side 64
    np.testing.assert_array_equal(perfect, control_map(image, "canny", 64, 64, "crop-and-resize", "64"))
    # an inpaint unit's map is made at the picture's size whatever the resolution (it goes with its mask)
    np.testing.assert_array_equal(control_map(image, "inpaint_only", 48, 48, "crop-and-resize", "256"),
                                  control_map(image, "inpaint_only", 48, 48, "crop-and-resize"))
    # tile_resample's smaller map comes back at the picture's size (bicubic), in either way of making it
    tile = control_map(image, "tile_resample", 64, 64, "just-resize", threshold_a=2.0)
    assert tile.shape == (64, 64, 3)


@pytest.mark.parametrize("value,expected", [("picture", "picture"), ("Pixel-Perfect", "pixel-perfect"),
                                            ("512", "512"), (64, "64"), ("1024.0", "1024"), (768.0, "768")])
def test_check_resolution(value, expected):
    assert check_resolution(value) == expected


@pytest.mark.parametrize("value", ["32", "4096", "512.5", "auto", "", "nan", "inf"])
def test_check_resolution_refuses(value):
    with pytest.raises(UsageError, match="--control-resolution must be picture, pixel-perfect or a number"):
        check_resolution(value)


def test_generate_runs_the_map_made_at_the_resolution(tiny_eps, tiny_controlnets, tmp_path):
    """--control-resolution 128 with canny: the picture of that map given as the control image (module
    none), and more than 2 away from the picture at the picture's own resolution."""
    from sdcli.imaging.image_io import read_rgb, save_png

    image = tiny_controlnets.images["b"]  # (stripes: canny finds their edges)
    unit = [dict(name="cn-b", image=image)]
    low = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "low", unit, "--control-preprocessor", "canny",
                           "--control-resolution", "128")
    own = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "own", unit, "--control-preprocessor", "canny")
    save_png(tmp_path / "map.png", control_map(read_rgb(image), "canny", 64, 64, "crop-and-resize", "128"))
    via_map = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "via", [dict(name="cn-b", image=tmp_path / "map.png")])
    print(f"control resolution: 128 is {moved(low, own)} from the picture's own; via its map {moved(low, via_map)}")
    assert np.array_equal(low, via_map)
    assert moved(low, own) > 2


def test_batch_rows_take_a_control_resolution(tmp_path):
    """A row's control_resolution (or --control-resolution) goes on its unit, and into its key when it
    is not picture (older keys stay); a bad one fails the row naming the field."""
    from types import SimpleNamespace

    from sdcli.batch.controlnet_rows import control_units, key_settings
    from sdcli.imaging.image_io import save_png

    save_png(tmp_path / "a.png", shapes(64, 64))
    opts = SimpleNamespace(control={"controlnet": ["cn"], "control_image": [str(tmp_path / "a.png")],
                                    "control_preprocessor": ["canny"]})
    (plain,) = control_units({}, opts, tmp_path)
    (row,) = control_units({"control_resolution": 256.0}, opts, tmp_path)
    (perfect,) = control_units({}, SimpleNamespace(control={**opts.control, "control_resolution": ["pixel-perfect"]}),
                               tmp_path)
    assert (plain.resolution, row.resolution, perfect.resolution) == ("picture", "256", "pixel-perfect")
    assert "resolution" not in key_settings((plain,))[0] and key_settings((row,))[0]["resolution"] == "256"
    with pytest.raises(ValueError, match="control_resolution must be picture, pixel-perfect or a number"):
        control_units({"control_resolution": "huge"}, opts, tmp_path)


def test_tile_resample_s_smaller_map_runs(tiny_eps, tiny_controlnets, tmp_path):
    """tile_resample at rate 4 makes a map a quarter of the picture's size: fitted back to the picture
    (bicubic, as the extension), it runs, and differs from rate 1 (the image itself) by more than 2."""
    unit = [dict(name="cn-a", image=tiny_controlnets.images["b"])]  # (stripes: lost to the down-sampling)
    halved = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "rate2", unit, "--control-preprocessor",
                              "tile_resample", "--control-threshold-a", "4")
    whole = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "rate1", unit, "--control-preprocessor",
                             "tile_resample")
    print(f"tile_resample: rate 4 is {moved(halved, whole)} from rate 1")
    assert moved(halved, whole) > 2
