"""A detected control map brought to the picture's size as A1111's ControlNet extension does
(its `detectmap_proc`), for a unit whose map is made at a preprocessor resolution: the resize
modes on the map rather than the image, and the extension's "high quality" resize, which keeps
what a map's kind needs:

- a map of 3 to 199 colours (segmentation, colour grids) is resized by nearest neighbour;
- a black-and-white map (2 colours, one under 16, one over 240) is resized, greyed, and made
  black and white again by Otsu's threshold; when most of its white is one pixel wide (edges:
  canny, scribbles) its lines are first kept at their local maxima, and thinned after, so a map
  made small and scaled up keeps one-pixel edges;
- anything else is resized by area when it shrinks and bicubically when it grows.

`pixel_perfect_resolution` is the extension's Pixel Perfect: the preprocessor resolution at
which the map comes out at the picture's scale.
"""
from __future__ import annotations

import numpy as np

# The thinning's hit-or-miss patterns (1: white, -1: black, 0: either), each in its four
# rotations: an erosion step removes a pixel matching one (Lvmin Zhang's edge thinning, as the
# extension's lvminthin), and one pass of the pruning patterns takes off spur ends.
_THIN = ([[-1, -1, -1], [0, 1, 0], [1, 1, 1]], [[0, -1, -1], [1, 1, -1], [0, 1, 0]])
_PRUNE = ([[-1, -1, -1], [-1, 1, -1], [0, 0, -1]], [[-1, -1, -1], [-1, 1, -1], [-1, 0, 0]])
_THIN_PASSES = 32


def _rotations(patterns) -> list[np.ndarray]:
    base = [np.array(p, dtype=np.int32) for p in patterns]
    return [np.rot90(p, k) for k in range(4) for p in base]


def _erode_patterns(x: np.ndarray, patterns: list[np.ndarray]) -> bool:
    """One pass: each pattern's matches set to 0 in `x` (in place, in turn); whether any matched."""
    import cv2

    changed = False
    for pattern in patterns:
        hits = cv2.morphologyEx(x, cv2.MORPH_HITMISS, pattern) > 127
        if hits.any():
            x[hits] = 0
            changed = True
    return changed


def thin(x: np.ndarray, prune: bool = True) -> np.ndarray:
    """A black-and-white uint8 [H, W] map's white lines thinned to one pixel (at most 32 passes),
    then, with `prune`, one pass taking off spurs."""
    y = np.ascontiguousarray(x).copy()
    thinning = _rotations(_THIN)
    for _ in range(_THIN_PASSES):
        if not _erode_patterns(y, thinning):
            break
    if prune:
        _erode_patterns(y, _rotations(_PRUNE))
    return y


def line_maxima(x: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: each pixel kept where it is the largest of its 3-pixel line in one of the four
    directions (horizontal, vertical, both diagonals), else 0 (the extension's nake_nms)."""
    import cv2

    lines = (np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.uint8), np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], np.uint8),
             np.eye(3, dtype=np.uint8), np.eye(3, dtype=np.uint8)[::-1].copy())
    keep = np.zeros(x.shape, bool)
    for kernel in lines:
        keep |= cv2.dilate(x, kernel) == x
    return np.where(keep, x, 0).astype(x.dtype)


def colour_count(x: np.ndarray) -> int:
    """How many different colours an [H, W, 3] uint8 map has."""
    packed = (x[..., 0].astype(np.uint32) << 16) | (x[..., 1].astype(np.uint32) << 8) | x[..., 2]
    return int(np.unique(packed).size)


def hq_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """An RGB uint8 map at width x height by the extension's high-quality resize (module docstring)."""
    import cv2

    h, w = x.shape[:2]
    if (w, h) == (width, height):
        return x
    shrinking, growing = width * height < w * h, width * height > w * h
    colours = colour_count(x)
    binary = colours == 2 and int(x.min()) < 16 and int(x.max()) > 240
    one_pixel = False
    if binary:
        ones = np.ones((3, 3), np.uint8)
        opened = cv2.dilate(cv2.erode(x, ones), ones)
        one_pixel = 2 * int(np.count_nonzero(opened < x)) > int(np.count_nonzero(x > 127))
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    y = cv2.resize(x, (width, height), interpolation=interpolation)
    if not binary:
        return y
    grey = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
    if one_pixel:
        grey = line_maxima(grey)
    _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if one_pixel:
        grey = thin(grey, prune=growing)
    return np.repeat(grey[:, :, None], 3, axis=2)


def fit_map(detected: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """A detected RGB uint8 map at width x height by resize mode `mode` (control.RESIZE_MODES),
    the extension's way: just-resize stretches; crop-and-resize scales to cover (sides rounded)
    and crops the middle; resize-and-fill scales to fit inside and fills the rest with the
    median colour of the map's border."""
    if mode == "just-resize":
        return np.ascontiguousarray(hq_resize(detected, width, height))
    h, w = detected.shape[:2]
    k = (min if mode == "resize-and-fill" else max)(height / h, width / w)
    scaled = hq_resize(detected, int(np.round(w * k)), int(np.round(h * k)))
    sh, sw = scaled.shape[:2]
    if mode == "resize-and-fill":
        border = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
        out = np.empty((height, width, detected.shape[2]), detected.dtype)
        out[:] = np.median(border, axis=0).astype(detected.dtype)
        y, x = max(0, (height - sh) // 2), max(0, (width - sw) // 2)
        out[y:y + sh, x:x + sw] = scaled[:height - y, :width - x]
        return out
    if mode == "crop-and-resize":
        y, x = max(0, (sh - height) // 2), max(0, (sw - width) // 2)
        return np.ascontiguousarray(scaled[y:y + height, x:x + width])
    raise ValueError(f"unknown resize mode {mode!r}")


def pixel_perfect_resolution(image_height: int, image_width: int, height: int, width: int, mode: str) -> int:
    """The extension's Pixel Perfect: the preprocessor resolution (the short side the image is
    scaled to) that makes the map at the picture's scale for resize mode `mode`."""
    k = (min if mode == "resize-and-fill" else max)(height / image_height, width / image_width)
    return int(np.round(k * min(image_height, image_width)))
