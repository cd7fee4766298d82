"""A1111 ControlNet's preprocessors without a neural network (sdcli/imaging/preprocessors.py) and
`sdcli detect`: each module against a reference computed here another way (scipy's Gaussian
with OpenCV's kernel size, per-pixel loops, block means, numbers worked out by hand) on fixed
synthetic images, and each map shown to differ from its input where it should."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli import app
from sdcli.imaging.control import PREPROCESSORS, detect, inpaint_map, preprocess


def drawing(h: int = 64, w: int = 128) -> np.ndarray:
    """White-ish paper with a soft colour gradient, dark lines of a few widths and a filled blob."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([235 - x * 40 // w, 240 - y * 30 // h, 225 + (x + y) * 20 // (h + w)], -1).astype(np.int32)
    img[h // 4, 4:w - 4] = (20, 30, 40)  # a 1-pixel line
    img[h // 2:h // 2 + 3, 8:w - 8] = (60, 40, 30)  # a 3-pixel line
    img[6:h - 6, w // 3] = (10, 10, 10)  # a vertical line
    img[h - 20:h - 8, w - 30:w - 12] = (90, 120, 150)  # a block
    img[h * 3 // 4, 4:w // 2] -= 10  # a faint line (Canny finds it at low thresholds only)
    return img.clip(0, 255).astype(np.uint8)


def moved(a, b) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# --- references -----------------------------------------------------------------------------------

def gaussian(img: np.ndarray, sigma: float, ksize: int) -> np.ndarray:
    """A separable Gaussian in float64 by scipy, with OpenCV's kernel (size round(sigma * 8 + 1) | 1
    for float images, sigma * 6 for uint8) and border (reflect 101: scipy's 'mirror')."""
    from scipy.ndimage import correlate1d

    t = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-t * t / (2 * sigma * sigma))
    k /= k.sum()
    out = correlate1d(img.astype(np.float64), k, axis=0, mode="mirror")
    return correlate1d(out, k, axis=1, mode="mirror")


def pad_by_index(img: np.ndarray) -> np.ndarray:
    """Edge padding to multiples of 64 by clamped indices (not np.pad)."""
    h, w = img.shape[:2]
    rows = np.minimum(np.arange((h + 63) // 64 * 64), h - 1)
    cols = np.minimum(np.arange((w + 63) // 64 * 64), w - 1)
    return img[rows][:, cols]


def lineart_reference(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    x = pad_by_index(img).astype(np.float64)
    darker = np.clip((gaussian(x, 6.0, 49) - x).min(axis=2), 0, 255)
    strong = np.sort(darker[darker > 8])
    median = (strong[(len(strong) - 1) // 2] + strong[len(strong) // 2]) / 2 if len(strong) else 16
    return np.clip(darker / max(16.0, median) * 127, 0, 255).astype(np.uint8)[:h, :w]


def xdog_reference(img: np.ndarray, threshold: float) -> np.ndarray:
    h, w = img.shape[:2]
    x = pad_by_index(img).astype(np.float64)
    d = (gaussian(x, 5.0, 41) - gaussian(x, 0.5, 5)).min(axis=2)
    out = np.zeros(d.shape, np.uint8)
    for (i, j), value in np.ndenumerate(d):  # per pixel, in Python integers
        dog = int(min(max(255 - value, 0), 255))
        out[i, j] = 255 if (2 * (255 - dog)) % 256 > threshold else 0  # the extension's uint8 wrap
    return out[:h, :w]


# --- the modules --------------------------------------------------------------------------------------

def test_canny_is_opencv_canny():
    import cv2

    img = drawing()
    edges = cv2.Canny(img, 100, 200)
    assert 0.01 < (edges > 0).mean() < 0.5
    out = preprocess(img, "canny")
    assert out.shape == img.shape and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], edges)
    np.testing.assert_array_equal(preprocess(img, "canny", threshold_a=20, threshold_b=60)[:, :, 0],
                                  cv2.Canny(img, 20, 60))
    assert (cv2.Canny(img, 20, 60) != edges).any()  # the thresholds are used
    odd = drawing(50, 70)  # padded to 64 x 128 by edge, then cut: as the extension's resize_image_with_pad
    np.testing.assert_array_equal(preprocess(odd, "canny")[:, :, 0], cv2.Canny(pad_by_index(odd), 100, 200)[:50, :70])
    assert moved(out, img) > 2


def test_invert_per_pixel():
    img = drawing(8, 12)
    out = preprocess(img, "invert")
    for (i, j, c), value in np.ndenumerate(img):
        assert out[i, j, c] == 255 - int(value)
    assert preprocess(np.full((2, 2, 3), 10, np.uint8), "invert")[0, 0, 0] == 245
    assert moved(out, img) > 2
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)  # HWC3: grey to 3 channels
    np.testing.assert_array_equal(detect(grey, "invert"), np.repeat(255 - grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("size", [(64, 128), (50, 70)])
def test_lineart_standard_against_scipy(size):
    img = drawing(*size)
    out = preprocess(img, "lineart_standard")
    ref = lineart_reference(img)
    assert out.shape == img.shape
    assert np.array_equal(out[:, :, 0], out[:, :, 2])
    diff = np.abs(out[:, :, 0].astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02, (diff.max(), (diff > 0).mean())
    assert ref.max() > 100 and (ref == 0).mean() > 0.5  # lines found, paper black
    assert moved(out, img) > 2


def test_lineart_standard_pinned():
    """A flat grey image has nothing darker than its blur: all 0. One black pixel on white: the
    blur there is 255 * (1 - w0), w0 the kernel's centre weight squared; with one value above 8
    (the median), 127 at that pixel."""
    assert preprocess(np.full((64, 64, 3), 128, np.uint8), "lineart_standard").max() == 0
    img = np.full((64, 64, 3), 255, np.uint8)
    img[32, 32] = 0
    out = preprocess(img, "lineart_standard")[:, :, 0]
    assert out[32, 32] == 127 and out.sum() == 127


@pytest.mark.parametrize("threshold", [32, 8])
def test_scribble_xdog_against_scipy(threshold):
    img = drawing()
    out = preprocess(img, "scribble_xdog", threshold_a=threshold)
    ref = xdog_reference(img, threshold)
    assert set(np.unique(out)) <= {0, 255}
    assert (out[:, :, 0] != ref).mean() < 0.01
    assert 0.005 < (ref == 255).mean() < 0.5
    assert moved(out, img) > 2


def test_scribble_xdog_default_is_32():
    img = drawing()
    assert PREPROCESSORS["scribble_xdog"].defaults["threshold_a"] == 32
    np.testing.assert_array_equal(preprocess(img, "scribble_xdog"), preprocess(img, "scribble_xdog", threshold_a=32))
    assert (preprocess(img, "scribble_xdog", threshold_a=1) != preprocess(img, "scribble_xdog")).any()


def test_tile_resample_block_means():
    img = drawing()
    np.testing.assert_array_equal(preprocess(img, "tile_resample"), img)  # rate 1: as it is
    np.testing.assert_array_equal(preprocess(img, "tile_resample", threshold_a=1.05), img)  # under 1.1 too
    out = preprocess(img, "tile_resample", threshold_a=2.0)
    means = img.reshape(32, 2, 64, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert out.shape == (32, 64, 3)
    assert np.abs(out - means).max() <= 0.5 + 1e-9
    assert moved(out, img[::2, ::2]) > 2  # averaged, not picked
    assert preprocess(img, "tile_resample", threshold_a=3.0).shape == (21, 42, 3)  # int(64 / 3), int(128 / 3)


def test_shuffle_moves_pixels_along_smooth_fields():
    """On a ramp image the bilinear remap reads the flow back: R is 4 * x-flow, G 4 * y-flow, and
    each flow is normalised to cover the whole image."""
    y, x = np.mgrid[0:64, 0:64]
    ramp = np.stack([x * 4, y * 4, np.full_like(x, 128)], -1).astype(np.uint8)
    out = preprocess(ramp, "shuffle")
    assert out[:, :, 0].min() <= 1 and out[:, :, 0].max() >= 251
    assert out[:, :, 1].min() <= 1 and out[:, :, 1].max() >= 251
    assert np.all(out[:, :, 2] == 128)
    assert np.abs(np.diff(out[:, :, 0].astype(int), axis=1)).max() < 40  # smooth: no pixel-to-pixel jumps
    assert moved(out, ramp) > 2
    np.testing.assert_array_equal(preprocess(ramp, "shuffle"), out)  # seed 0 each time
    np.testing.assert_array_equal(preprocess(ramp, "shuffle", seed=0), out)
    assert moved(preprocess(ramp, "shuffle", seed=1), out) > 2


def test_identity_modules_and_inpaint_map():
    img = drawing()
    for name in ("none", "tile_colorfix", "inpaint_only"):
        np.testing.assert_array_equal(preprocess(img, name), img)
    assert PREPROCESSORS["tile_colorfix"].defaults == {"threshold_a": 8.0}
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[10:20, 30:50] = 255
    cond = inpaint_map(img, mask)
    assert cond.dtype == np.float32 and cond.shape == img.shape
    assert np.all(cond[10:20, 30:50] == -1.0)
    np.testing.assert_allclose(cond[0, 0], img[0, 0] / 255.0, rtol=0, atol=1e-7)
    assert (cond >= 0).sum() == img.size - 10 * 20 * 3


def test_blur_gaussian_against_scipy():
    img = drawing()
    out = preprocess(img, "blur_gaussian")  # sigma 9
    diff = np.abs(out.astype(float) - np.round(gaussian(img, 9.0, 55)))  # OpenCV: fixed point for uint8
    assert diff.max() <= 2 and diff.mean() < 0.5, (diff.max(), diff.mean())
    assert moved(out, img) > 2


def test_threshold_per_pixel():
    img = drawing()
    out = preprocess(img, "threshold")  # 127
    want = np.zeros_like(img)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            if min(int(v) for v in img[y, x]) > 127:
                want[y, x] = 255
    np.testing.assert_array_equal(out, want)
    assert 0 < (out == 255).mean() < 1 and moved(out, img) > 100
    low = preprocess(img, "threshold", threshold_a=15)  # the lines (20..60) turn white, not the darkest (10)
    assert (low == 255).sum() > (out == 255).sum() and np.all(low[10:20, 128 // 3] == 0)
    assert PREPROCESSORS["threshold"].defaults == {"processor_res": 512, "threshold_a": 127}
    assert detect(img, "threshold", 128).shape == (128, 256, 3)


def srgb_lightness(rgb: np.ndarray) -> np.ndarray:
    """L* of sRGB colours (D65) scaled to 0..255, as 8-bit Lab stores it, in float64."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.212671, 0.715160, 0.072169])
    f = np.where(y > 0.008856, np.cbrt(y), 7.787 * y + 16 / 116)
    return (116 * f - 16) * 255 / 100


def test_recolor_against_formulas():
    img = drawing()
    lum = preprocess(img, "recolor_luminance")[:, :, 0]
    want = srgb_lightness(img[:, :, ::-1])  # the extension's BGR2LAB of an RGB image: red and blue swapped
    assert np.abs(lum - want).max() <= 1.5, np.abs(lum - want).max()
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert abs(int(preprocess(red, "recolor_luminance")[0, 0, 0]) - 82) <= 1  # blue's lightness (32.3), not red's
    gamma = preprocess(img, "recolor_luminance", threshold_a=0.5)[:, :, 0]
    expected = ((lum.astype(np.float32) / 255) ** 0.5 * 255)
    assert np.abs(gamma - expected).max() <= 1.5 and moved(gamma, lum) > 20  # gamma moves the map
    value = preprocess(img, "recolor_intensity", threshold_a=1.7)
    np.testing.assert_array_equal(value[:, :, 0], value[:, :, 2])
    want = (img.max(axis=2) / 255.0) ** 1.7 * 255
    assert np.abs(value[:, :, 0] - want).max() <= 1 and moved(value[:, :, 0], lum) > 10
    assert PREPROCESSORS["recolor_intensity"].defaults == {"threshold_a": 1.0}
    assert detect(img, "recolor_luminance", 256).shape == img.shape  # no resolution: at the image's size


def cubic_cell(img: np.ndarray, i: int, j: int) -> np.ndarray:
    """A cell of a 64-to-1 bicubic shrink by hand: OpenCV samples the source at (64 * i + 31.5,
    64 * j + 31.5), whose four taps each way (offsets 30..33) weigh -0.09375, 0.59375, 0.59375,
    -0.09375 (its a = -0.75 kernel at t = 0.5)."""
    k = np.array([-0.09375, 0.59375, 0.59375, -0.09375])
    block = img[64 * i + 30:64 * i + 34, 64 * j + 30:64 * j + 34].astype(np.float64)
    return np.einsum("y,x,yxc->c", k, k, block)


def test_color_grid_cells_by_hand():
    """t2ia_color_grid: each 64x64 cell of the map is one colour, the bicubic sample at the cell's
    centre (within 1: OpenCV's fixed point); flat quadrants come back as they are."""
    y, x = np.mgrid[0:128, 0:192]
    img = np.stack([x * 255 // 191, y * 255 // 127, (x * y) % 256], -1).astype(np.uint8)
    out = preprocess(img, "t2ia_color_grid")
    assert out.shape == img.shape and moved(out, img) > 100
    for i in range(2):
        for j in range(3):
            cell = out[64 * i:64 * i + 64, 64 * j:64 * j + 64].reshape(-1, 3)
            assert np.all(cell == cell[0]), (i, j)
            assert np.abs(cell[0] - cubic_cell(img, i, j)).max() <= 1, (cell[0], cubic_cell(img, i, j))
    quads = np.zeros((128, 128, 3), np.uint8)
    quads[:64, 64:] = (200, 10, 10)
    quads[64:, :64] = (10, 200, 10)
    quads[64:, 64:] = (30, 60, 250)
    np.testing.assert_array_equal(preprocess(quads, "color"), quads)
    assert resolve_name("t2ia_color_grid") == "color" and PREPROCESSORS["color"].defaults == {"processor_res": 512}


def test_color_grid_detect_resizes_by_area():
    """detect's t2ia_color_grid resizes the short side to processor_res by area (growing too), not
    by the bicubic of the other modules, as the extension's color does."""
    import cv2

    img = drawing(100, 150)
    out = detect(img, "t2ia_color_grid", 256)
    assert out.shape == (256, 384, 3)
    area = cv2.resize(img, (384, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, preprocess(area, "color"))
    cubic = cv2.resize(img, (384, 256), interpolation=cv2.INTER_CUBIC)
    assert moved(out, preprocess(cubic, "color")) > 0  # (the other resize gives another grid)
    assert detect(drawing(70, 64), "color", 64).shape == (70, 64, 3)  # a side under 64 cells: one cell


def test_tile_colorfix_sharp_is_the_image_with_two_sliders():
    img = drawing()
    np.testing.assert_array_equal(preprocess(img, "tile_colorfix+sharp", threshold_b=0.5), img)
    assert PREPROCESSORS["tile_colorfix+sharp"].defaults == {"threshold_a": 8.0, "threshold_b": 1.0}


def resolve_name(name: str) -> str:
    from sdcli.imaging.control import resolve

    return resolve(name)


def test_detect_resizes_to_processor_res():
    img = drawing(100, 150)
    assert detect(img, "canny", 256).shape == (256, 384, 3)
    assert detect(img, "lineart_standard").shape == (512, 768, 3)  # processor_res 512 by default
    assert detect(img, "scribble_xdog", processor_res=64).shape == (64, 96, 3)
    assert detect(img, "canny", -1).shape == (512, 768, 3)  # out of the slider: the default, as the extension
    for name in ("invert", "tile_colorfix", "none", "inpaint_only"):  # these work at the image's size
        assert detect(img, name, 256).shape == img.shape
    assert detect(img, "tile_resample", 256, 2.0).shape == (50, 75, 3)
    assert detect(img, "shuffle", 256).shape == (256, 384, 3)  # (the current extension: every legacy module's slider)
    import cv2

    big = cv2.resize(img, (384, 256), interpolation=cv2.INTER_CUBIC)  # short side 256: bicubic up
    np.testing.assert_array_equal(detect(img, "canny", 256, 50, 120)[:, :, 0], cv2.Canny(big, 50, 120))
    np.testing.assert_array_equal(detect(img, "canny", 256, -1, 999), detect(img, "canny", 256, 100, 200))


def test_spec_has_the_extension_defaults():
    assert list(PREPROCESSORS)[0] == "none"
    assert PREPROCESSORS["canny"].defaults == {"processor_res": 512, "threshold_a": 100, "threshold_b": 200}
    assert PREPROCESSORS["tile_resample"].defaults == {"threshold_a": 1.0}
    assert PREPROCESSORS["lineart_standard"].label == "lineart_standard (from white bg & black line)"
    assert PREPROCESSORS["invert"].defaults == {}


def test_names_labels_and_unknown_ones():
    from sdcli.imaging.control import resolve
    from sdcli.util.errors import UsageError

    assert resolve("invert (from white bg & black line)") == "invert"
    assert resolve("Lineart_Standard") == "lineart_standard"
    for name in ("depth_midas", "normal_bae", "softedge_teed", "mlsd"):
        with pytest.raises(UsageError, match="neural network"):
            resolve(name)
    with pytest.raises(UsageError, match="not available yet"):
        resolve("reference_only")
    with pytest.raises(ValueError, match="one of none, canny"):
        preprocess(drawing(), "sharpen")


# --- sdcli detect ---------------------------------------------------------------------------------------

@pytest.fixture
def pictures(tmp_path):
    from sdcli.imaging.image_io import save_png

    paths = []
    for i, size in enumerate(((64, 96), (80, 64))):
        path = tmp_path / f"pic{i}.png"
        save_png(path, drawing(*size))
        paths.append(path)
    return paths


def test_cli_writes_maps(pictures, tmp_path):
    from sdcli.imaging.image_io import read_rgb

    result = CliRunner().invoke(app, ["detect", "lineart_standard", *map(str, pictures), "--processor-res", "128"])
    assert result.exit_code == 0, result.output
    written = [p.with_name(f"{p.stem}-lineart_standard.png") for p in pictures]
    assert result.output.split() == [str(p) for p in written]
    for source, path in zip(pictures, written):
        np.testing.assert_array_equal(read_rgb(path), detect(read_rgb(source), "lineart_standard", 128))
    out = tmp_path / "maps"
    result = CliRunner().invoke(app, ["detect", "canny", str(pictures[0]), "-o", str(out), "--threshold-a", "50", "-q"])
    assert result.exit_code == 0 and result.output == ""
    assert read_rgb(out / "pic0-canny.png").shape == (512, 768, 3)
    one = tmp_path / "one.png"
    assert CliRunner().invoke(app, ["detect", "invert", str(pictures[1]), "--output", str(one)]).exit_code == 0
    np.testing.assert_array_equal(read_rgb(one), 255 - read_rgb(pictures[1]))


def test_cli_json(pictures):
    result = CliRunner().invoke(app, ["detect", "canny", *map(str, pictures), "--json", "--threshold-b", "150"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 2
    assert set(lines[0]) == {"path", "source", "module", "width", "height", "processor_res", "threshold_a",
                             "threshold_b", "seconds"}
    assert lines[0]["module"] == "canny" and lines[0]["threshold_a"] == 100 and lines[0]["threshold_b"] == 150
    assert (lines[0]["width"], lines[0]["height"]) == (768, 512) and (lines[1]["width"], lines[1]["height"]) == (512, 640)


@pytest.mark.parametrize("args, says", [
    (["detect", "sharpen"], "unknown preprocessor 'sharpen': one of none, canny, invert"),
    (["detect", "depth_midas"], "not converted: not available yet"),
    (["detect", "canny", "--threshold-a", "300"], "must be between 1 and 255"),
    (["detect", "invert", "--threshold-a", "3"], "has no such slider"),
])
def test_cli_user_mistakes(pictures, args, says):
    result = CliRunner().invoke(app, [*args, *map(str, pictures)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdcli: error:") and says in lines[0], result.output
    assert sorted(p.name for p in pictures[0].parent.iterdir()) == ["pic0.png", "pic1.png"]


def test_cli_unreadable_image(pictures):
    bad = pictures[0].parent / "bad.png"
    bad.write_bytes(b"not a picture")
    result = CliRunner().invoke(app, ["detect", "canny", str(pictures[0]), str(bad)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert sorted(p.name for p in bad.parent.iterdir()) == ["bad.png", "pic0.png", "pic1.png"]


# --- generate --control-preprocessor ----------------------------------------------------------------------

def test_generate_takes_lineart_standard(tiny_eps, tiny_controlnets, tmp_path):
    """generate's map is preprocess(image, "lineart_standard"): the same picture as the map given
    with --control-preprocessor none; the map is not the image."""
    from sdcli.imaging.image_io import read_png_text, read_rgb, save_png
    from tests.controlnets import sdcli_controlnet

    image = tiny_controlnets.images["a"]
    line_map = preprocess(read_rgb(image), "lineart_standard")
    assert moved(line_map, read_rgb(image)) > 2 and moved(line_map, preprocess(read_rgb(image), "canny")) > 2
    map_file = tmp_path / "lineart-map.png"
    save_png(map_file, line_map)
    ours = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "lineart", [dict(name="cn-a", image=image)],
                            "--control-preprocessor", "lineart_standard")
    given = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "given", [dict(name="cn-a", image=map_file)],
                             "--control-preprocessor", "none")
    print(f"lineart_standard via generate vs the map given with none: max {moved(ours, given)}")
    assert moved(ours, given) <= 1
    assert "Module: lineart_standard" in read_png_text(tmp_path / "lineart.png")["parameters"]


def test_generate_takes_the_sliders(tiny_eps, tiny_controlnets, tmp_path):
    """--control-threshold-a/-b reach the preprocessor: canny at 30/90 through generate gives the
    picture of that map given with none, which the default thresholds' picture is not; the PNG
    records the thresholds and --from-image redoes it byte for byte; a batch row's
    control_threshold_a/b make generate's picture, and a changed one makes the row again."""
    import json

    from typer.testing import CliRunner as Runner

    from sdcli.imaging.image_io import read_png_text, read_rgb, save_png
    from tests.controlnets import SCHEDULER, STEPS, sdcli_controlnet

    image = tiny_controlnets.images["a"]
    edges, default = (preprocess(read_rgb(image), "canny", **t) for t in ({"threshold_a": 30, "threshold_b": 90}, {}))
    assert moved(edges, default) > 100
    map_file = tmp_path / "canny-map.png"
    save_png(map_file, edges)
    unit = [dict(name="cn-a", image=image)]
    ours = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "ours", unit, "--control-preprocessor", "canny",
                            "--control-threshold-a", 30, "--control-threshold-b", 90)
    given = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "given", [dict(name="cn-a", image=map_file)])
    plain = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "plain", unit, "--control-preprocessor", "canny")
    print(f"canny 30/90 via generate vs its map given: max {moved(ours, given)}; vs canny's defaults "
          f"{moved(ours, plain)}")
    assert moved(ours, given) <= 1 and moved(ours, plain) > 2
    text = read_png_text(tmp_path / "ours.png")["parameters"]
    assert "Module: canny, Model: cn-a, Weight: 1.0, Resize Mode: Crop and Resize, Threshold A: 30.0, Threshold B: 90.0" in text
    again = tmp_path / "again.png"
    result = Runner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--from-image", str(tmp_path / "ours.png"),
                                   "--output", str(again), "--quiet", "--controlnet-dir", str(tiny_controlnets.folder),
                                   "--control-image", str(image)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == (tmp_path / "ours.png").read_bytes()

    rows = tmp_path / "rows.jsonl"
    row = {"prompt": "a", "seed": 0, "name": "r", "controlnet": "cn-a", "control_image": str(image),
           "control_preprocessor": "canny", "control_threshold_a": 30, "control_threshold_b": 90}
    rows.write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    command = ["batch", str(rows), "-o", str(out), "--model", str(tiny_eps.ov_dir), "--steps", str(STEPS),
               "--scheduler", SCHEDULER, "--width", "64", "--height", "64", "--rng", "torch", "--precision", "f32",
               "--controlnet-dir", str(tiny_controlnets.folder), "--quiet"]
    assert Runner().invoke(app, command).exit_code == 0
    single = tmp_path / "single.png"
    result = Runner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--prompt", "a", "--steps", str(STEPS),
                                   "--scheduler", SCHEDULER, "--width", "64", "--height", "64", "--rng", "torch",
                                   "--precision", "f32", "--controlnet-dir", str(tiny_controlnets.folder), "--controlnet",
                                   "cn-a", "--control-image", str(image), "--control-preprocessor", "canny",
                                   "--control-threshold-a", "30", "--control-threshold-b", "90", "--output",
                                   str(single), "--quiet", "--seed", "0"])
    assert result.exit_code == 0, result.output
    first = read_rgb(out / "r.png")
    assert moved(first, read_rgb(single)) == 0
    rows.write_text(json.dumps({**row, "control_threshold_a": 100, "control_threshold_b": 200}) + "\n")  # canny's own
    redone = Runner().invoke(app, command[:-1])
    assert redone.exit_code == 0 and "1 done, 0 failed, 0 skipped" in redone.output, redone.output
    assert moved(read_rgb(out / "r.png"), first) > 2


@pytest.mark.parametrize("flags, says", [
    (["--control-preprocessor", "invert", "--control-threshold-a", "3"], "--control-threshold-a: preprocessor invert "
                                                                          "has no such slider"),
    (["--control-preprocessor", "canny", "--control-threshold-b", "300"], "--control-threshold-b (High Threshold of "
                                                                           "canny) must be between 1 and 255"),
    (["--control-preprocessor", "canny", "--control-threshold-a", "50", "--control-threshold-a", "60"],
     "--control-threshold-a given 2 times for 1 ControlNets"),
    (["--control-threshold-a", "50"], "--control-threshold-a is for a ControlNet unit"),
])
def test_generate_refuses_a_slider_it_cannot_use(tiny_eps, tiny_controlnets, tmp_path, flags, says):
    from tests.test_bad_input import assert_refused

    out = tmp_path / "x.png"
    unit = ["--controlnet", "cn-a", "--control-image", str(tiny_controlnets.images["a"])] if len(flags) > 2 else []
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--prompt", "a", "--steps", "1",
                                      "--controlnet-dir", str(tiny_controlnets.folder), *unit, *flags,
                                      "--output", str(out)])
    assert_refused(result, 2, says)
    assert not out.exists()
