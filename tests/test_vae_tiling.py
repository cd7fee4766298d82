"""Tiled VAE (issue 23): sdcli/engine/vae_tiling.py around the VAE IRs against diffusers'
AutoencoderKL with enable_tiling(), on the tiny model's VAE with tiles small enough that tiling
happens (tile_sample_min_size / tile_latent_min_size set on diffusers' VAE to match)."""
from __future__ import annotations

import numpy as np
import pytest

TILE = 32  # pixels; the tiny VAE's factor is 2: 16 latents, 3 x 3 tiles on 64 x 64
MAX_DIFF = 2  # of 255


def pixels(decoded: np.ndarray) -> np.ndarray:
    from sdcli.imaging.image_io import to_pixels

    return to_pixels(decoded).astype(int)


@pytest.fixture(scope="module")
def parts(tiny_eps):
    import torch
    from diffusers import AutoencoderKL

    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import VaeDecoder, VaeEncoder
    from sdcli.runtime.core import Runtime

    folder = ModelFolder.open(tiny_eps.ov_dir)
    runtime = Runtime("CPU", "f32", None)
    vae = AutoencoderKL.from_pretrained(tiny_eps.diffusers_dir, subfolder="vae", torch_dtype=torch.float32).eval()
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = TILE, TILE // 2
    decoder = VaeDecoder(runtime, folder, (-1, -1))  # one compiled model for every tile size
    encoder = VaeEncoder(runtime, folder, (-1, -1))
    return folder, vae, decoder, encoder


def test_tiled_decode_matches_diffusers(parts):
    import torch

    from sdcli.engine.vae_tiling import Tiling, tiled_decode

    folder, vae, decoder, _ = parts
    tiling = Tiling.for_vae(folder.vae_config, TILE)
    assert (tiling.sample, tiling.latent) == (TILE, TILE // 2)
    z = np.random.default_rng(0).standard_normal((1, 4, 32, 40)).astype(np.float32)
    assert tiling.decodes_tiled(z.shape[2:])
    calls = []
    ours = pixels(tiled_decode(decoder, z, tiling, on_tile=lambda done, total: calls.append((done, total))))
    with torch.no_grad():
        want = pixels(vae.decode(torch.from_numpy(z)).sample.numpy())
    untiled = pixels(decoder(z))
    diff, moved = np.abs(ours - want).max(), np.abs(untiled - ours)
    print(f"tiled decode vs diffusers enable_tiling(): max {diff}; untiled differs by max {moved.max()} "
          f"mean {moved.mean():.2f}; {len(calls)} tiles")
    assert ours.shape == (64, 80, 3) and calls[-1] == (12, 12)
    assert diff <= MAX_DIFF
    assert moved.max() > 5 * MAX_DIFF  # the tiling is exercised: untiled is not the same picture
    other = pixels(tiled_decode(decoder, -z, tiling))
    assert np.abs(other - ours).mean() > 10  # other latents move it


def test_tiled_encode_matches_diffusers(parts):
    import torch

    from sdcli.engine.vae_tiling import Tiling, tiled_encode

    folder, vae, _, encoder = parts
    tiling = Tiling.for_vae(folder.vae_config, TILE)
    x = (np.random.default_rng(1).random((1, 3, 80, 64), dtype=np.float32) * 2 - 1)
    assert tiling.encodes_tiled(x.shape[2:])

    def moments(tile):
        mean, logvar = encoder(tile)
        return np.concatenate([mean, logvar], axis=1)

    ours = tiled_encode(moments, x, tiling)
    with torch.no_grad():
        want = vae.encode(torch.from_numpy(x)).latent_dist.parameters.numpy()
    untiled = moments(x)
    scale = np.abs(want).max()
    diff = np.abs(ours - want).max() / scale
    moved = np.abs(untiled - ours).max() / scale
    print(f"tiled encode vs diffusers: relative max {diff:.2e}; untiled differs by {moved:.2e}")
    assert ours.shape == want.shape == (1, 8, 40, 32)
    assert diff <= 1e-4 and moved > 1e-2


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_generate_vae_tiling_matches_diffusers(tiny_eps, init_image_file, tmp_path, mode):
    """`sdcli generate --vae-tiling --vae-tile-size 32` against StableDiffusion(Img2Img)Pipeline with
    vae.enable_tiling() at the same tile sizes (64 x 64: 3 x 3 tiles; img2img at 96 x 64 encodes in tiles too)."""
    from tests.reference import diffusers_pixels, sdcli_pixels, vae_tiling

    options = dict(steps=2, width=64, height=64) if mode == "txt2img" else \
        dict(steps=2, init_image=init_image_file, strength=0.6)  # 96 x 64, the init image's size
    components = tiny_eps.pipe().components
    with vae_tiling(components["vae"], TILE):
        want = diffusers_pixels(components, "euler", **options)
    ours = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "tiled.png", "--vae-tiling", "--vae-tile-size", TILE,
                        scheduler="euler", **options)
    whole = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "whole.png", "--no-vae-tiling", scheduler="euler", **options)
    diff, moved = np.abs(ours - want).max(), np.abs(ours - whole).max()
    print(f"generate {mode} --vae-tiling vs diffusers enable_tiling(): max {diff}; vs untiled max {moved}")
    assert diff <= MAX_DIFF and moved > 5 * MAX_DIFF


def test_tiling_switched_on_when_a_whole_decode_would_not_fit(tiny_eps, monkeypatch):
    from sdcli.engine import memory
    from sdcli.engine.engine import Engine
    from sdcli.engine.vae_tiling import Tiling
    from sdcli.model.folder import ModelFolder

    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=None)
    z = np.random.default_rng(3).standard_normal((1, 4, 32, 32)).astype(np.float32)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**12)
    whole = engine.decode(z, "full", None, TILE)
    assert engine.last_vae_tiling is None
    monkeypatch.setattr(memory, "available_bytes", lambda: 0)
    tiled = engine.decode(z, "full", None, TILE)
    assert engine.last_vae_tiling == Tiling(TILE, TILE // 2)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() > 5 * MAX_DIFF
    assert np.array_equal(engine.decode(z, "full", True, TILE), tiled)
    # the up-front check: a size whose whole decode does not fit, but a tiled one does, is not refused
    folder = ModelFolder.open(tiny_eps.ov_dir)
    monkeypatch.setattr(memory, "UNET_K", 0.0)  # the tiny UNet's activations would outweigh its VAE's
    kwargs = dict(element_bytes=4, batch=2)
    whole_est = memory.estimate(folder, 1024, 1024, **kwargs)
    tiled_est = memory.estimate(folder, 1024, 1024, vae_tile=TILE, **kwargs)
    assert whole_est.stage == "decoding" and tiled_est.peak < whole_est.peak
    room = (whole_est.peak + tiled_est.peak) // 2
    monkeypatch.setattr(memory, "available_bytes", lambda: room)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    got = memory.require(folder, 1024, 1024, precision="f32", vae_tile_size=TILE)
    assert got.peak == tiled_est.peak
    with pytest.raises(Exception, match="decoding"):
        memory.require(folder, 1024, 1024, precision="f32", vae_tiling=False)
