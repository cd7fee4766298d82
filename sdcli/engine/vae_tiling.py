"""Tiled VAE decoding and encoding, as diffusers' AutoencoderKL does after enable_tiling()
(autoencoder_kl.py: tiled_decode, _tiled_encode, blend_v, blend_h), around sdcli's VAE IR calls.

Decoding: the latents are cut into tiles of `latent` rows and columns, started every
int(latent * (1 - overlap)) (the last ones shorter, cut at the edge); each tile is decoded alone;
then, row by row and left to right, each decoded tile's first int(sample * overlap) rows are
blended linearly with the (already blended) tile above it, its first columns likewise with the
one to its left, and its top-left int(sample * (1 - overlap)) square kept.  Encoding is the same
with pixels and latents swapped (the encoder's moments, mean and log-variance, are blended).
`sample` is the tile's size in pixels, `latent` in latents; overlap 0.25 (diffusers' factor).

Memory: the decoder's activations grow with the tile, not the image (engine/memory.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

OVERLAP_FACTOR = 0.25  # diffusers' tile_overlap_factor


@dataclass(frozen=True)
class Tiling:
    """diffusers' tile_sample_min_size (`sample`, pixels), tile_latent_min_size (`latent`) and
    tile_overlap_factor."""

    sample: int
    latent: int
    overlap: float = OVERLAP_FACTOR

    @classmethod
    def for_vae(cls, vae_config: dict, tile_size: int | None = None) -> "Tiling":
        """diffusers' defaults for this VAE (its config's sample_size, and that over the VAE's
        factor), or `tile_size` pixels."""
        configured = vae_config.get("sample_size", 512)
        configured = configured[0] if isinstance(configured, (list, tuple)) else configured
        factor = 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)
        sample = int(tile_size or configured)
        return cls(sample, int(sample / factor))

    def decodes_tiled(self, latent_hw: tuple[int, int]) -> bool:
        """Whether diffusers would tile these latents (a side longer than a tile)."""
        return max(latent_hw) > self.latent

    def encodes_tiled(self, image_hw: tuple[int, int]) -> bool:
        return max(image_hw) > self.sample


def blend_v(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """b's first rows faded in from a's last ones (in place, as diffusers)."""
    extent = min(a.shape[2], b.shape[2], extent)
    for y in range(extent):
        b[:, :, y, :] = a[:, :, -extent + y, :] * (1 - y / extent) + b[:, :, y, :] * (y / extent)
    return b


def blend_h(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """b's first columns faded in from a's last ones (in place, as diffusers)."""
    extent = min(a.shape[3], b.shape[3], extent)
    for x in range(extent):
        b[:, :, :, x] = a[:, :, :, -extent + x] * (1 - x / extent) + b[:, :, :, x] * (x / extent)
    return b


def _tiled(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile_in: int, tile_out: int, overlap: float,
           on_tile: Callable[[int, int], None] | None) -> np.ndarray:
    """diffusers' tiling loop: tiles of `tile_in` of x, each run, blended over int(tile_out * overlap)
    and cut to tile_out minus that."""
    stride = int(tile_in * (1 - overlap))
    extent = int(tile_out * overlap)
    limit = tile_out - extent
    starts_y, starts_x = range(0, x.shape[2], stride), range(0, x.shape[3], stride)
    total, done = len(starts_y) * len(starts_x), 0
    rows = []
    for i in starts_y:
        row = []
        for j in starts_x:
            row.append(np.array(run(np.ascontiguousarray(x[:, :, i:i + tile_in, j:j + tile_in])), dtype=np.float32))
            done += 1
            if on_tile:
                on_tile(done, total)
        rows.append(row)
    out_rows = []
    for i, row in enumerate(rows):
        out_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = blend_v(rows[i - 1][j], tile, extent)
            if j > 0:
                tile = blend_h(row[j - 1], tile, extent)
            out_row.append(tile[:, :, :limit, :limit])
        out_rows.append(np.concatenate(out_row, axis=3))
    return np.concatenate(out_rows, axis=2)


def tiled_decode(decoder: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, tiling: Tiling,
                 on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """diffusers' tiled_decode: the decoder's output [N, 3, H*f, W*f] for `latents` [N, C, H, W],
    decoded tile by tile (`decoder` takes any tile size)."""
    return _tiled(decoder, latents, tiling.latent, tiling.sample, tiling.overlap, on_tile)


def tiled_encode(encoder: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, tiling: Tiling,
                 on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """diffusers' _tiled_encode: the encoder's moments for `pixels`, encoded tile by tile
    (`encoder` returns the moments of any tile size: mean and log-variance along channels)."""
    return _tiled(encoder, pixels, tiling.sample, tiling.latent, tiling.overlap, on_tile)


def tiled_encoder(encoder: Callable[[np.ndarray], tuple], tiling: Tiling) -> Callable[[np.ndarray], tuple]:
    """`encoder` (pixels -> (mean, log-variance or None), any size) run as diffusers' tiled encode:
    the moments blended tile by tile, then split again."""
    def encode(pixels: np.ndarray) -> tuple:
        split = []

        def moments(tile: np.ndarray) -> np.ndarray:
            mean, logvar = encoder(tile)
            split[:] = [mean.shape[1], logvar is not None]
            return mean if logvar is None else np.concatenate([mean, logvar], axis=1)

        out = tiled_encode(moments, pixels, tiling)
        channels, has_logvar = split
        return (out[:, :channels], out[:, channels:]) if has_logvar else (out, None)

    return encode


def choose_encode_tiling(asked: bool | None, vae_config: dict, image_hw: tuple[int, int], tile_size: int | None,
                         whole_fits: Callable[[], bool]) -> Tiling | None:
    """The tiling to encode `image_hw` pixels with, or None (whole): as the decode's
    (engine/decode.py choose_tiling), for an image larger than a tile."""
    if asked is False or "block_out_channels" not in vae_config:
        return None
    tiling = Tiling.for_vae(vae_config, tile_size)
    if not tiling.encodes_tiled(image_hw):
        return None
    return tiling if asked or not whole_fits() else None
