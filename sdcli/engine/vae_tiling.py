"""Tiled VAE decoding and encoding, as diffusers' AutoencoderKL does after enable_tiling()
(autoencoder_kl.py: tiled_decode, _tiled_encode, blend_v, blend_h), around sdcli's VAE IR calls.

Decoding: the latents are cut into tiles of `latent` rows and columns, started every
int(latent * (1 - overlap)) (the last ones shorter, cut at the edge); each tile is decoded alone;
then, row by row and left to right, each decoded tile's first int(sample * overlap) rows are
blended linearly with the (already blended) tile above it, its first columns likewise with the
one to its left, and its top-left int(sample * (1 - overlap)) square kept.  Encoding is the same
with pixels and latents swapped (the encoder's moments, mean and log-variance, are blended).
`sample` is the tile's size in pixels, `latent` in latents; overlap 0.25 (diffusers' factor).

The tiny VAE (TAESD) is tiled as diffusers' AutoencoderTiny does after enable_tiling()
(autoencoder_tiny.py: _tiled_decode, _tiled_encode), which differs: tiles of 512 pixels whatever
the config (tile_sample_min_size), overlap 0.125; a tile starts every tile - int(tile * 0.125)
(even where the image is no larger than a tile: a last, thin tile); each tile's output is laid
into one output array (zeros at first) through a mask, out = mask * tile + (1 - mask) * out,
the mask the product of a ramp down the rows (ones in the first row of tiles) and one across the
columns (ones in the first column), each arange(output tile) / (output blend - 1) clipped to
[0, 1].  It works on the raw latents (its scale_latents / unscale_latents serve only its
forward(), which the pipelines do not call).

Memory: the decoder's activations grow with the tile, not the image (engine/memory.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sdcli.util.errors import UsageError

OVERLAP_FACTOR = 0.25  # diffusers' tile_overlap_factor
TINY_OVERLAP = 0.125  # AutoencoderTiny's tile_overlap_factor
TINY_TILE = 512  # AutoencoderTiny's tile_sample_min_size (its config has no sample_size)


@dataclass(frozen=True)
class Tiling:
    """diffusers' tile_sample_min_size (`sample`, pixels), tile_latent_min_size (`latent`) and
    tile_overlap_factor."""

    sample: int
    latent: int
    overlap: float = OVERLAP_FACTOR
    tiny: bool = False  # AutoencoderTiny's masks (module docstring), not AutoencoderKL's blend_v/blend_h

    @classmethod
    def for_vae(cls, vae_config: dict, tile_size: int | None = None) -> "Tiling":
        """diffusers' defaults for this VAE (its config's sample_size, and that over the VAE's
        factor), or `tile_size` pixels."""
        configured = vae_config.get("sample_size", 512)
        configured = configured[0] if isinstance(configured, (list, tuple)) else configured
        factor = 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)
        sample = int(tile_size or configured)
        return cls(sample, int(sample / factor))

    @classmethod
    def for_tiny(cls, factor: int, tile_size: int | None = None) -> "Tiling":
        """AutoencoderTiny's tiling for a TAESD of `factor` (its spatial_scale_factor): 512 pixels,
        or `tile_size`, which must be a multiple of 8 x factor from 16 x factor so that the blend
        (1/8 of a tile) is whole latents and its encode mask's ramp (blend / factor - 1) not empty."""
        sample = int(tile_size or TINY_TILE)
        if sample % (8 * factor) or sample < 16 * factor:
            raise UsageError(f"--vae-tile-size with --vae tiny must be a multiple of {8 * factor} from "
                             f"{16 * factor} (the tiny VAE blends 1/8 of a tile, in whole latents), got {sample}")
        return cls(sample, sample // factor, TINY_OVERLAP, tiny=True)

    @property
    def factor(self) -> int:
        """The VAE's size ratio (pixels per latent)."""
        return self.sample // self.latent

    def _one_tile(self, size: int) -> int:
        """The largest side done in one tile: a tile's, or for AutoencoderTiny (which always
        tiles) its stride."""
        return size - int(size * self.overlap) if self.tiny else size

    def decodes_tiled(self, latent_hw: tuple[int, int]) -> bool:
        """Whether diffusers would decode these latents in more than one tile."""
        return max(latent_hw) > self._one_tile(self.latent)

    def encodes_tiled(self, image_hw: tuple[int, int]) -> bool:
        return max(image_hw) > self._one_tile(self.sample)


def tiling_for(folder, vae_kind: str, tile_size: int | None = None) -> Tiling | None:
    """The tiling diffusers' enable_tiling() gives the VAE `vae_kind` ("full" or "tiny") of
    `folder` (a ModelFolder), or None where sdcli does not tile it (a VAE without
    block_out_channels)."""
    if vae_kind == "tiny":
        return Tiling.for_tiny(folder.vae_scale_factor, tile_size)
    if "block_out_channels" not in folder.vae_config:
        return None
    return Tiling.for_vae(folder.vae_config, tile_size)


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


def _tiny_tiled(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int, scale: Callable[[int], int],
                ramp: np.ndarray, on_tile: Callable[[int, int], None] | None) -> np.ndarray:
    """AutoencoderTiny's tiling loop: tiles of `tile` of x started every tile - int(tile * 0.125),
    each run and laid into the output (x's index i is the output's scale(i)) through the mask
    ramp x ramp (ones along a side at the image's first row or column of tiles)."""
    stride = tile - int(tile * TINY_OVERLAP)
    starts_y, starts_x = range(0, x.shape[2], stride), range(0, x.shape[3], stride)
    total, done, out = len(starts_y) * len(starts_x), 0, None
    for i in starts_y:
        for j in starts_x:
            part = np.array(run(np.ascontiguousarray(x[:, :, i:i + tile, j:j + tile])), dtype=np.float32)
            if out is None:
                out = np.zeros((x.shape[0], part.shape[1], scale(x.shape[2]), scale(x.shape[3])), np.float32)
            h, w = part.shape[2:]
            rows = ramp[:h] if i > 0 else np.ones(h, np.float32)
            cols = ramp[:w] if j > 0 else np.ones(w, np.float32)
            mask = rows[:, None] * cols[None, :]
            region = out[:, :, scale(i):scale(i + tile), scale(j):scale(j + tile)]
            region[...] = mask * part + (1 - mask) * region
            done += 1
            if on_tile:
                on_tile(done, total)
    return out


def _ramp(length: float, blend: float) -> np.ndarray:
    """AutoencoderTiny's blend ramp: arange(length) / (blend - 1), clipped to [0, 1]."""
    return np.clip(np.arange(length, dtype=np.float32) / np.float32(blend - 1), 0, 1)


def tiled_decode(decoder: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, tiling: Tiling,
                 on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """diffusers' tiled_decode (AutoencoderTiny's _tiled_decode where `tiling.tiny`): the decoder's
    output [N, 3, H*f, W*f] for `latents` [N, C, H, W], decoded tile by tile (`decoder` takes any
    tile size)."""
    if tiling.tiny:
        f, blend = tiling.factor, int(tiling.latent * tiling.overlap)
        return _tiny_tiled(decoder, latents, tiling.latent, lambda i: i * f, _ramp(tiling.latent * f, blend * f),
                           on_tile)
    return _tiled(decoder, latents, tiling.latent, tiling.sample, tiling.overlap, on_tile)


def tiled_encode(encoder: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, tiling: Tiling,
                 on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """diffusers' _tiled_encode (AutoencoderTiny's where `tiling.tiny`): the encoder's moments for
    `pixels`, encoded tile by tile (`encoder` returns the moments of any tile size: mean and
    log-variance along channels, or the tiny encoder's latents)."""
    if tiling.tiny:
        f, blend = tiling.factor, int(tiling.sample * tiling.overlap)
        return _tiny_tiled(encoder, pixels, tiling.sample, lambda i: i // f, _ramp(tiling.sample / f, blend / f),
                           on_tile)
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


def choose_encode_tiling(asked: bool | None, tiling: Tiling | None, image_hw: tuple[int, int],
                         whole_fits: Callable[[], bool]) -> Tiling | None:
    """The tiling to encode `image_hw` pixels with, or None (whole): as the decode's
    (engine/decode.py choose_tiling), for an image larger than a tile (`tiling`: tiling_for's)."""
    if asked is False or tiling is None or not tiling.encodes_tiled(image_hw):
        return None
    return tiling if asked or not whole_fits() else None
