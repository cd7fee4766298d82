"""Reference images (FLUX.2-klein's editing): how each is sized and turned into the VAE
encoder's input, as diffusers' Flux2KleinPipeline(image=[...]) prepares them.

Each image is checked as Flux2ImageProcessor.check_image_input checks it (both sides at least
64 pixels, an aspect ratio of at most 8:1); one of more than 1024x1024 pixels in area is first
scaled to that area (LANCZOS, int() of each side); its sides are then cut down to multiples of
`multiple` (twice the VAE's factor: the transformer takes 2x2 patches of latents) by a centre
crop (Flux2ImageProcessor's resize_mode "crop", which crops without scaling); pixels to [-1, 1].
Without --width/--height the picture takes the first reference's size.
"""
from __future__ import annotations

import math

import numpy as np

from sdcli.util.errors import UsageError

MAX_AREA = 1024 * 1024  # Flux2KleinPipeline: larger references are scaled down to this area
MIN_SIDE = 64  # Flux2ImageProcessor.check_image_input's min_side_length
MAX_ASPECT = 8  # ... and max_aspect_ratio


def check_reference(image: np.ndarray, label: str) -> None:
    """UsageError for a reference the pipeline refuses (`label`: how to name it)."""
    height, width = image.shape[:2]
    if width < MIN_SIDE or height < MIN_SIDE:
        raise UsageError(f"--reference-image {label} is {width}x{height} pixels; both sides must be at least "
                         f"{MIN_SIDE} (as Flux2KleinPipeline requires)")
    if max(width / height, height / width) > MAX_ASPECT:
        raise UsageError(f"--reference-image {label} is {width}x{height} pixels; its aspect ratio must be at most "
                         f"{MAX_ASPECT}:1 (as Flux2KleinPipeline requires)")


def _area_size(width: int, height: int) -> tuple[int, int]:
    """The size a reference is scaled to before it is cut: the same, or MAX_AREA's."""
    if width * height <= MAX_AREA:
        return width, height
    scale = math.sqrt(MAX_AREA / (width * height))
    return int(width * scale), int(height * scale)


def reference_size(image: np.ndarray, multiple: int) -> tuple[int, int]:
    """(width, height) the reference `image` ([H, W, 3]) is encoded at."""
    width, height = _area_size(image.shape[1], image.shape[0])
    width, height = width // multiple * multiple, height // multiple * multiple
    if width == 0 or height == 0:
        raise UsageError(f"a --reference-image must be at least {multiple}x{multiple} pixels")
    return width, height


def reference_pixels(image: np.ndarray, multiple: int) -> np.ndarray:
    """The VAE encoder's input for the reference `image` (RGB uint8 [H, W, 3]): float32
    [1, 3, h, w] in [-1, 1] at reference_size."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    area = _area_size(picture.width, picture.height)
    if area != picture.size:
        picture = picture.resize(area, Image.Resampling.LANCZOS)
    width, height = reference_size(image, multiple)
    # Flux2ImageProcessor._resize_and_crop: the centre (width, height), not scaled
    left, top = (picture.width - width) // 2, (picture.height - height) // 2
    picture = picture.crop((left, top, left + width, top + height)).convert("RGB")
    pixels = np.asarray(picture).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((np.float32(2.0) * pixels - np.float32(1.0)).transpose(2, 0, 1)[None])
