"""ControlNet control images: fitted to the picture's size as A1111's ControlNet resize modes
do, and the built-in preprocessors (numpy/OpenCV, no model: imaging/preprocessors.py, re-exported
here: PREPROCESSORS, preprocess, detect).

Resize modes (A1111's names): just-resize stretches the image to the size; crop-and-resize
scales it to cover the size and crops the middle; resize-and-fill scales it to fit inside
and fills the rest with the median colour of its border pixels.

A unit's preprocessor resolution (RESOLUTIONS) says where its map is made: `picture` (sdcli's
default) fits the image to the picture first and makes the map at the picture's size; a number
(A1111's Preprocessor Resolution, the API's processor_res) or `pixel-perfect` (A1111's Pixel
Perfect) makes the map from the image as given, scaled so its short side is that resolution, and
then fits the map to the picture as the extension does (imaging/detectmap.py).
"""
from __future__ import annotations

import math

import numpy as np

from sdcli.imaging.image_io import resize
from sdcli.imaging.preprocessors import (PREPROCESSORS, Preprocessor, Slider, UnknownPreprocessor,  # noqa: F401
                                         detect, inpaint_map, preprocess, resolve)

RESIZE_MODES = {"just-resize": "Just Resize", "crop-and-resize": "Crop and Resize", "resize-and-fill": "Resize and Fill"}
CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's ControlNet canny slider defaults (PREPROCESSORS["canny"])
PICTURE, PIXEL_PERFECT = "picture", "pixel-perfect"
RESOLUTIONS = f"{PICTURE}, {PIXEL_PERFECT} or a number of pixels from 64 to 2048"


def check_resolution(value, flag: str = "--control-resolution") -> str:
    """A unit's preprocessor resolution as a string: picture, pixel-perfect or a whole number of
    pixels within A1111's Preprocessor Resolution slider (64..2048); UsageError naming `flag` else."""
    from sdcli.imaging.preprocessors import RESOLUTION
    from sdcli.util.errors import UsageError

    text = str(value).strip().lower()
    if text in (PICTURE, PIXEL_PERFECT):
        return text
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number == int(number) and RESOLUTION.minimum <= number <= RESOLUTION.maximum):
        raise UsageError(f"{flag} must be {RESOLUTIONS}, got {value!r}")
    return str(int(number))


def control_map(image: np.ndarray, module: str, width: int, height: int, mode: str, resolution: str = PICTURE,
                **params) -> np.ndarray:
    """A unit's RGB uint8 control map at width x height from its image (uint8 RGB, grey or RGBA)
    by preprocessor `module` (with `params`: its thresholds), resize mode `mode` and preprocessor
    resolution `resolution` (module docstring; inpaint modules: always the picture's).  A map the
    module makes at another size than it was given (tile_resample's) is fitted to the picture as
    the extension fits maps."""
    from sdcli.imaging.detectmap import fit_map, pixel_perfect_resolution
    from sdcli.imaging.preprocessors import hwc3, resize_short_side

    image = hwc3(image)
    spec = PREPROCESSORS[resolve(module)]
    if resolution == PICTURE or spec.needs_mask:  # (an inpaint unit's map goes with its mask, at the picture's size)
        made = preprocess(fit(image, width, height, mode), module, **params)
    else:
        if spec.resizes:
            short = (pixel_perfect_resolution(image.shape[0], image.shape[1], height, width, mode)
                     if resolution == PIXEL_PERFECT else int(resolution))
            image = (spec.resize or resize_short_side)(image, short)
        made = preprocess(image, module, **params)
    return made if made.shape[:2] == (height, width) else fit_map(made, width, height, mode)


def fit(image: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] `image` at width x height by resize mode `mode` (RESIZE_MODES)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height) or mode == "just-resize":
        return resize(image, width, height)
    if mode == "crop-and-resize":
        k = max(width / w, height / h)
        sw, sh = max(width, round(w * k)), max(height, round(h * k))
        scaled = resize(image, sw, sh)
        x, y = (sw - width) // 2, (sh - height) // 2
        return np.ascontiguousarray(scaled[y:y + height, x:x + width])
    if mode == "resize-and-fill":
        k = min(width / w, height / h)
        sw, sh = min(width, max(1, round(w * k))), min(height, max(1, round(h * k)))
        scaled = resize(image, sw, sh)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
        out = np.empty((height, width, 3), np.uint8)
        out[:] = np.median(border, axis=0).astype(np.uint8)
        x, y = (width - sw) // 2, (height - sh) // 2
        out[y:y + sh, x:x + sw] = scaled
        return out
    raise ValueError(f"unknown resize mode {mode!r}")


def fit_mask(mask: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """An inpaint unit's uint8 mask [H, W] fitted as `fit` fits its control image; with
    resize-and-fill the added border is masked (255: repainted), as the extension fills it."""
    h, w = mask.shape[:2]
    rgb = np.repeat(np.asarray(mask, np.uint8)[:, :, None], 3, axis=2)
    if mode != "resize-and-fill" or (w, h) == (width, height):
        return fit(rgb, width, height, mode)[:, :, 0]
    k = min(width / w, height / h)
    sw, sh = min(width, max(1, round(w * k))), min(height, max(1, round(h * k)))
    out = np.full((height, width), 255, np.uint8)
    x, y = (width - sw) // 2, (height - sh) // 2
    out[y:y + sh, x:x + sw] = resize(rgb, sw, sh)[:, :, 0]
    return out


def control_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] to the ControlNet's controlnet_cond: float32 [1, 3, H, W] in [0, 1]
    (diffusers' control image processor: no normalisation to [-1, 1])."""
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
