"""Upscaling an image as A1111's "Extras" tab does: a model upscaler (an IR that `sdcli convert`
made of an ESRGAN-family checkpoint, model/upscalers.py) run tile by tile on A1111's grid and
blended back (modules/images.py split_grid/combine_grid, modules/upscaler_utils.py
upscale_with_model), or Lanczos or Nearest; then resized with Lanczos to the requested scale.

What A1111 does, reproduced here:
- Upscaler.upscale: the target is (width * scale // 8 * 8, height * scale // 8 * 8); the model
  runs up to three times while the image is smaller than that (an 8x from a 4x model: twice),
  and the result is resized to the target with Lanczos where it differs (a 2x from a 4x model).
- upscale_with_model: tiles of `tile` pixels overlapping by `overlap` (A1111's ESRGAN_tile 192,
  ESRGAN_tile_overlap 8; 0: the whole image at once); a tile past the image's edge (an image
  smaller than a tile) takes black from outside it, as PIL's crop gives.  Each tile goes to the
  model as BGR in 0..1 (pil_image_to_torch_bgr) and comes back clamped, times 255, rounded.
- combine_grid: each tile's first `overlap` columns (then each row's first `overlap` rows) are
  pasted over the previous one through a linear ramp mask (PIL's paste, which this uses).
- spandrel's size requirements: a tile smaller than the model's minimum, or not a multiple of
  what it needs, is padded (reflect, then replicate) and the output cut back.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sdcli.model.upscalers import BUILTIN, INPUT_NAME, UpscalerFolder
from sdcli.util.errors import UsageError
from sdcli.util.lru import LRUCache

DEFAULT_TILE = 192  # A1111's ESRGAN_tile
DEFAULT_OVERLAP = 8  # A1111's ESRGAN_tile_overlap
MAX_PASSES = 3  # Upscaler.upscale's loop
SCALE_MAX = 16.0


@dataclass
class TileInfo:
    """Progress of one model pass: StepProgress reads index, total and seconds."""

    index: int
    total: int
    seconds: float
    rows: int = 0
    cols: int = 0


# -- A1111's grid ------------------------------------------------------------------------------
@dataclass
class Grid:
    tiles: list  # [[y, h, [[x, w, tile], ...]], ...]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int


def split_grid(image, tile_w: int, tile_h: int, overlap: int) -> Grid:
    """A1111's images.split_grid of a PIL image."""
    w, h = image.size
    cols = math.ceil((w - overlap) / (tile_w - overlap))
    rows = math.ceil((h - overlap) / (tile_h - overlap))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = int(row * dy)
        if y + tile_h >= h:
            y = h - tile_h
        row_images = []
        for col in range(cols):
            x = int(col * dx)
            if x + tile_w >= w:
                x = w - tile_w
            row_images.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, row_images])
    return grid


def combine_grid(grid: Grid):
    """A1111's images.combine_grid: the tiles pasted back, each overlap blended by a linear mask."""
    from PIL import Image

    def mask(r: np.ndarray):
        return Image.fromarray((r * 255 / grid.overlap).astype(np.uint8), "L")

    overlap = grid.overlap
    if overlap:
        mask_w = mask(np.arange(overlap, dtype=np.float32).reshape((1, overlap)).repeat(grid.tile_h, axis=0))
        mask_h = mask(np.arange(overlap, dtype=np.float32).reshape((overlap, 1)).repeat(grid.image_w, axis=1))
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        combined_row = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0:
                combined_row.paste(tile, (0, 0))
                continue
            if overlap:
                combined_row.paste(tile.crop((0, 0, overlap, h)), (x, 0), mask=mask_w)
            combined_row.paste(tile.crop((overlap, 0, w, h)), (x + overlap, 0))
        if y == 0:
            combined.paste(combined_row, (0, 0))
            continue
        if overlap:
            combined.paste(combined_row.crop((0, 0, combined_row.width, overlap)), (0, y), mask=mask_h)
        combined.paste(combined_row.crop((0, overlap, combined_row.width, h)), (0, y + overlap))
    return combined


def upscale_with_model(patch: Callable, image, tile: int, overlap: int,
                       on_tile: Callable[[TileInfo], None] | None = None):
    """A1111's upscaler_utils.upscale_with_model: `patch` (PIL image -> PIL image, the model's
    output) on each tile of the grid, or on the whole image when `tile` is 0."""
    if tile <= 0:
        started = time.perf_counter()
        out = patch(image)
        if on_tile:
            on_tile(TileInfo(0, 1, time.perf_counter() - started, 1, 1))
        return out
    grid = split_grid(image, tile, tile, overlap)
    total = sum(len(row) for _, _, row in grid.tiles)
    done, scale, new_tiles = 0, 1, []
    for y, h, row in grid.tiles:
        new_row = []
        for x, w, piece in row:
            started = time.perf_counter()
            out = patch(piece)
            scale = out.width // piece.width
            new_row.append([x * scale, w * scale, out])
            if on_tile:
                on_tile(TileInfo(done, total, time.perf_counter() - started, len(grid.tiles), len(row)))
            done += 1
        new_tiles.append([y * scale, h * scale, new_row])
    return combine_grid(Grid(new_tiles, grid.tile_w * scale, grid.tile_h * scale, grid.image_w * scale,
                             grid.image_h * scale, grid.overlap * scale))


# -- the model ----------------------------------------------------------------------------------
def padding(width: int, height: int, req: dict) -> tuple[int, int]:
    """spandrel's SizeRequirements.get_padding: (extra columns, extra rows)."""
    minimum, multiple, square = int(req.get("minimum", 0)), max(1, int(req.get("multiple_of", 1))), bool(req.get("square"))
    w, h = max(minimum, width), max(minimum, height)
    w, h = -(-w // multiple) * multiple, -(-h // multiple) * multiple
    if square:
        w = h = max(w, h)
    return w - width, h - height


def pad(x: np.ndarray, pad_w: int, pad_h: int) -> np.ndarray:
    """spandrel's pad_tensor on [1, C, H, W]: reflect (at most size - 1), then replicate, at the
    right and bottom."""
    h, w = x.shape[2:]
    rw, rh = min(pad_w, w - 1), min(pad_h, h - 1)
    x = np.pad(x, ((0, 0), (0, 0), (0, rh), (0, rw)), mode="reflect")
    return np.pad(x, ((0, 0), (0, 0), (0, pad_h - rh), (0, pad_w - rw)), mode="edge")


class ModelUpscaler:
    """A converted upscaler compiled for `runtime` (one compiled model per input size, a tile's
    size mostly); called on a PIL image, it returns the model's upscaled image as A1111's
    upscale_pil_patch does (BGR in, unless `bgr` is False)."""

    def __init__(self, folder: UpscalerFolder, runtime, precision: str | None = None, bgr: bool = True):
        self.folder = folder
        self.runtime = runtime
        self.precision = precision
        self.bgr = bgr
        self._compiled = LRUCache(2)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def scale(self) -> int:
        return self.folder.scale

    def _model(self, shape: tuple[int, ...]):
        compiled = self._compiled.get(shape)
        if compiled is None:
            compiled = self.runtime.load(f"upscaler-{self.folder.name}", self.folder.xml, {INPUT_NAME: list(shape)},
                                         precision=self.precision)
            self._compiled.put(shape, compiled)
        return compiled[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model on float32 [1, C, H, W] in 0..1 (channels as it takes them), padded to its
        size requirements and cut back: [1, C, H*scale, W*scale] in 0..1."""
        h, w = x.shape[2:]
        pad_w, pad_h = padding(w, h, self.folder.size_requirements)
        if pad_w or pad_h:
            x = pad(x, pad_w, pad_h)
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._model(tuple(x.shape)).create_infer_request().infer({0: x})
        y = next(iter(out.values()))
        return y[..., : h * self.scale, : w * self.scale]

    def __call__(self, image):
        from PIL import Image

        rgb = np.asarray(image.convert("RGB"))
        pixels = rgb[:, :, ::-1] if self.bgr else rgb
        x = (np.ascontiguousarray(pixels.transpose(2, 0, 1)) / 255)[None].astype(np.float32)
        y = np.clip(self.run(x)[0], 0, 1)
        arr = (255.0 * np.moveaxis(y, 0, 2)).round().astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr[:, :, ::-1] if self.bgr else arr), "RGB")


# -- A1111's Upscaler.upscale -----------------------------------------------------------------------
def check_scale(scale: float) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)) or scale <= 1 or scale > SCALE_MAX:
        raise UsageError(f"--scale must be more than 1 and at most {SCALE_MAX:g}, got {scale:g}")


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """Upscaler.upscale's destination: each side times `scale`, down to a multiple of 8."""
    return int((width * scale) // 8 * 8), int((height * scale) // 8 * 8)


def upscale(image: np.ndarray, upscaler: str | ModelUpscaler, scale: float, tile: int = DEFAULT_TILE,
            overlap: int = DEFAULT_OVERLAP, on_tile: Callable[[TileInfo], None] | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] upscaled by `scale` as A1111's Upscaler.upscale does: `upscaler` is
    "Lanczos", "Nearest" or a ModelUpscaler."""
    from PIL import Image

    check_scale(scale)
    if tile < 0 or overlap < 0 or (tile and overlap >= tile):
        raise UsageError(f"--tile-overlap must be less than --tile (got tile {tile}, overlap {overlap})")
    lanczos = Image.Resampling.LANCZOS
    img = Image.fromarray(np.ascontiguousarray(image[:, :, :3]), "RGB")
    dest_w, dest_h = target_size(img.width, img.height, scale)
    if dest_w < 8 or dest_h < 8:
        raise UsageError(f"{img.width}x{img.height} times {scale:g} is under 8 pixels on a side")
    if isinstance(upscaler, str) and upscaler not in BUILTIN:
        raise UsageError(f"unknown built-in upscaler {upscaler!r} (have {', '.join(BUILTIN)})")

    def do_upscale(im):
        if isinstance(upscaler, str):
            method = lanczos if upscaler == "Lanczos" else Image.Resampling.NEAREST
            return im.resize((int(im.width * scale), int(im.height * scale)), resample=method)
        return upscale_with_model(upscaler, im, tile, overlap, on_tile)

    for i in range(MAX_PASSES):
        if img.width >= dest_w and img.height >= dest_h and (i > 0 or scale != 1):
            break
        shape = img.size
        img = do_upscale(img)
        if shape == img.size:
            break
    if img.size != (dest_w, dest_h):
        img = img.resize((dest_w, dest_h), resample=lanczos)
    return np.asarray(img.convert("RGB"))


def resolve(name: str, runtime, folder=None, precision: str | None = None, bgr: bool = True) -> str | ModelUpscaler:
    """An upscaler by name: Lanczos or Nearest (any case), else a converted one in the upscaler
    folder (model/upscalers.py: UsageError naming the folder searched)."""
    from sdcli.model.upscalers import find_upscaler

    for builtin in BUILTIN:
        if name.lower() == builtin.lower():
            return builtin
    return ModelUpscaler(find_upscaler(name, folder), runtime, precision, bgr)
