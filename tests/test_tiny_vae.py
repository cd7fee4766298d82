"""The tiny autoencoder (`sdcli convert --tiny-vae`, `sdcli generate --vae tiny`): its
converted halves against diffusers' AutoencoderTiny, pixel parity with diffusers'
pipelines given `vae=AutoencoderTiny(...)`, adding one to a converted folder, and errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import read_png_text, read_rgb
from tests import reference
from tests.reference import compare

STEPS = 8
SEED = 2024


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()  # progress lines ("loading ...") may come first
    assert lines[-1].startswith("sdcli: error: "), result.stderr
    assert not any(line.startswith(("sdcli:", "Traceback")) for line in lines[:-1]), result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def taesd_dir(tmp_path_factory) -> Path:
    from sdcli.convert.random_model import build_random_taesd

    folder = tmp_path_factory.mktemp("taesd") / "tiny-taesd"
    build_random_taesd(folder, seed=11)
    return folder


@pytest.fixture(scope="module")
def taesd(taesd_dir):
    import torch
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(taesd_dir, torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def with_tiny(tiny_eps, taesd_dir, tmp_path_factory) -> Path:
    """tiny_eps converted again, with --tiny-vae."""
    out = tmp_path_factory.mktemp("tiny-vae-models") / "tiny-eps-taesd"
    r = run("convert", tiny_eps.diffusers_dir, "--output", out, "--weight-format", "fp32", "--tiny-vae", taesd_dir,
            "--quiet")
    assert r.exit_code == 0, r.output
    return out


def io_of(path):
    model = ov.Core().read_model(str(path))
    inputs = {p.get_any_name(): (p.get_element_type().get_type_name(), str(p.get_partial_shape())) for p in model.inputs}
    return inputs, [sorted(p.get_names()) for p in model.outputs]


def test_convert_writes_both_halves_with_the_full_vaes_names(with_tiny, taesd_dir):
    for name in ("vae_encoder_tiny", "vae_decoder_tiny"):
        for f in ("openvino_model.xml", "openvino_model.bin", "config.json"):
            assert (with_tiny / name / f).is_file(), f"{name}/{f}"
        config = json.loads((with_tiny / name / "config.json").read_text())
        assert config["_class_name"] == "AutoencoderTiny" and config["scaling_factor"] == 1.0
    assert io_of(with_tiny / "vae_decoder_tiny" / "openvino_model.xml") == (
        {"latent_sample": ("f32", "[?,4,?,?]")}, [["sample"]])
    assert io_of(with_tiny / "vae_encoder_tiny" / "openvino_model.xml") == (
        {"sample": ("f32", "[?,3,?,?]")}, [["latents"]])
    assert json.loads((with_tiny / "sdcli.json").read_text())["tiny_vae"] == str(taesd_dir)
    assert not list(with_tiny.parent.glob(".*.part"))


def test_converted_halves_match_autoencoder_tiny(with_tiny, taesd):
    """The same input through OpenVINO (f32) and through diffusers' AutoencoderTiny."""
    import torch

    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import VaeDecoder, VaeEncoder
    from sdcli.runtime.core import Runtime

    folder = ModelFolder.open(with_tiny)
    runtime = Runtime("CPU", "f32", None)
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 16, 24, generator=g) * 1.5
    image = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    with torch.no_grad():
        decoded = taesd.decode(latents).sample.numpy()
        encoded = taesd.encode(image).latents.numpy()
    ours_decoded = VaeDecoder(runtime, folder, (16, 24), "vae_decoder_tiny")(latents.numpy())
    ours_encoded, logvar = VaeEncoder(runtime, folder, (32, 48), "vae_encoder_tiny")(image.numpy())
    assert logvar is None  # latents, not a distribution
    decoder_diff = float(np.abs(ours_decoded - decoded).max())
    encoder_diff = float(np.abs(ours_encoded - encoded).max())
    print(f"tiny VAE vs AutoencoderTiny, max abs diff: decoder {decoder_diff:.2e}, encoder {encoder_diff:.2e}")
    assert decoded.std() > 0.2 and encoded.std() > 0.2  # the outputs have content
    assert decoder_diff < 1e-4, decoder_diff
    assert encoder_diff < 1e-4, encoder_diff


# --- pixels against diffusers' pipelines with vae=AutoencoderTiny ---------------------

def diffusers_pixels(tiny_eps, taesd, scheduler, width=None, height=None, init_image=None, strength=None,
                     mask=None) -> np.ndarray:
    return reference.diffusers_pixels({**tiny_eps.pipe().components, "vae": taesd}, scheduler, steps=STEPS, seed=SEED,
                                      width=width, height=height, init_image=init_image, strength=strength, mask=mask)


def sdcli_pixels(model_dir, scheduler, out, *extra) -> np.ndarray:
    return reference.sdcli_pixels(model_dir, out, "--vae", "tiny", *extra, steps=STEPS, seed=SEED, scheduler=scheduler)


@pytest.mark.parametrize("scheduler,width,height", [("euler", 64, 64), ("ddim", 96, 64), ("euler_a", 64, 96),
                                                    ("pndm", 64, 64)])
def test_txt2img_matches_diffusers(with_tiny, tiny_eps, taesd, scheduler, width, height, tmp_path, parity_log):
    theirs = diffusers_pixels(tiny_eps, taesd, scheduler, width, height)
    ours = sdcli_pixels(with_tiny, scheduler, tmp_path / "out.png", "--width", width, "--height", height)
    compare(ours, theirs, parity_log, model="tiny vae", scheduler=scheduler, mode="txt2img", size=f"{width}x{height}")


@pytest.mark.parametrize("scheduler,strength", [("euler", 0.6), ("ddim", 0.6), ("euler_a", 0.5), ("ddim", 1.0)])
def test_img2img_matches_diffusers(with_tiny, tiny_eps, taesd, scheduler, strength, init_image_file, tmp_path,
                                   parity_log):
    """The tiny encoder's latents are used as they are: one random draw fewer than with
    the full VAE, whose latent distribution is sampled first."""
    theirs = diffusers_pixels(tiny_eps, taesd, scheduler, init_image=init_image_file, strength=strength)
    ours = sdcli_pixels(with_tiny, scheduler, tmp_path / "out.png", "--init-image", init_image_file,
                        "--strength", strength)
    compare(ours, theirs, parity_log, model="tiny vae", scheduler=scheduler, mode=f"img2img {strength}", size="96x64")


def test_inpainting_matches_diffusers(with_tiny, tiny_eps, taesd, init_image_file, tmp_path, parity_log):
    import cv2

    mask = np.zeros((64, 96), np.uint8)
    mask[10:50, 20:70] = 255
    mask_path = tmp_path / "mask.png"
    cv2.imwrite(str(mask_path), mask)
    theirs = diffusers_pixels(tiny_eps, taesd, "euler", 96, 64, init_image_file, 0.7, mask_path)
    ours = sdcli_pixels(with_tiny, "euler", tmp_path / "out.png", "--init-image", init_image_file, "--strength", 0.7,
                        "--mask", mask_path, "--mask-blur", 0)
    compare(ours, theirs, parity_log, model="tiny vae", scheduler="euler", mode="inpaint 0.7", size="96x64")


def test_png_records_the_tiny_vae_and_from_image_reuses_it(with_tiny, tmp_path):
    first = tmp_path / "first.png"
    sdcli_pixels(with_tiny, "euler", first, "--width", 64, "--height", 64)
    assert "VAE Decoder: TAESD" in read_png_text(first)["parameters"]  # A1111's name for it
    again = tmp_path / "again.png"
    r = run("generate", "--model", with_tiny, "--from-image", first, "--output", again, "--quiet")
    assert r.exit_code == 0, r.output
    assert np.array_equal(read_rgb(first), read_rgb(again))


# --- adding a tiny VAE to a converted folder, and info ----------------------------------

def test_into_adds_it_to_a_converted_folder(tiny_eps, taesd_dir, with_tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_eps.ov_dir, model)
    r = run("convert", "--tiny-vae", taesd_dir, "--into", model, "--weight-format", "fp32", "--quiet")
    assert r.exit_code == 0, r.output
    for name in ("vae_encoder_tiny", "vae_decoder_tiny"):
        assert (model / name / "openvino_model.bin").read_bytes() == (with_tiny / name / "openvino_model.bin").read_bytes()
        assert (model / name).stat().st_mode & 0o777 == (model / "unet").stat().st_mode & 0o777
    assert json.loads((model / "sdcli.json").read_text())["tiny_vae"] == str(taesd_dir)
    assert not [p.name for p in model.iterdir() if p.name.startswith(".")]

    line = one_line_error(run("convert", "--tiny-vae", taesd_dir, "--into", model))
    assert "already has a tiny VAE" in line and "--force" in line
    r = run("convert", "--tiny-vae", taesd_dir, "--into", model, "--force", "--quiet")
    assert r.exit_code == 0, r.output
    assert not [p.name for p in model.iterdir() if p.name.startswith(".")]

    r = run("info", model, "--json")
    assert r.exit_code == 0, r.output
    names = [c["name"] for c in json.loads(r.stdout)["model"]["components"]]
    assert {"vae_encoder_tiny", "vae_decoder_tiny"} <= set(names)
    assert "vae_decoder_tiny" in run("info", model).stdout


def test_random_full_size_taesd_has_taesds_architecture(tmp_path):
    from sdcli.convert.random_model import main

    main([str(tmp_path / "taesd"), "--taesd"])
    config = json.loads((tmp_path / "taesd" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny"
    assert config["encoder_block_out_channels"] == [64, 64, 64, 64]
    assert config["num_decoder_blocks"] == [3, 3, 3, 1] and config["latent_channels"] == 4


# --- errors: one line, exit 2, nothing written -----------------------------------------

def test_generate_without_a_tiny_vae_in_the_folder(tiny_eps, tmp_path):
    out = tmp_path / "out.png"
    line = one_line_error(run("generate", "--model", tiny_eps.ov_dir, "--prompt", "x", "--steps", 2, "--vae", "tiny",
                              "--output", out, "--quiet"))
    assert "has no tiny VAE" in line and "--tiny-vae" in line
    assert not out.exists()


def test_wrong_vae_value(tiny_eps, tmp_path):
    line = one_line_error(run("generate", "--model", tiny_eps.ov_dir, "--prompt", "x", "--vae", "small",
                              "--output", tmp_path / "out.png"))
    assert "--vae must be full or tiny" in line


def test_img2img_with_a_tiny_decoder_but_no_tiny_encoder(with_tiny, init_image_file, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(with_tiny, model)
    shutil.rmtree(model / "vae_encoder_tiny")
    line = one_line_error(run("generate", "--model", model, "--prompt", "x", "--steps", 2, "--vae", "tiny",
                              "--init-image", init_image_file, "--output", tmp_path / "out.png", "--quiet"))
    assert "vae_encoder_tiny" in line


@pytest.mark.parametrize("what", ["autoencoder_kl", "pipeline_folder", "missing"])
def test_tiny_vae_source_that_is_not_an_autoencoder_tiny(tiny_eps, what, tmp_path):
    source = {"autoencoder_kl": tiny_eps.diffusers_dir / "vae", "pipeline_folder": tiny_eps.diffusers_dir,
              "missing": tmp_path / "nothing-here"}[what]
    out = tmp_path / "out"
    line = one_line_error(run("convert", tiny_eps.diffusers_dir, "--output", out, "--tiny-vae", source))
    assert {"autoencoder_kl": "holds AutoencoderKL, not an AutoencoderTiny", "pipeline_folder": "no config.json",
            "missing": "not a folder or Hub repo id"}[what] in line
    assert not out.exists() and not list(tmp_path.glob(".*.part"))
    model = tmp_path / "model"
    shutil.copytree(tiny_eps.ov_dir, model)
    one_line_error(run("convert", "--tiny-vae", source, "--into", model))
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in tiny_eps.ov_dir.iterdir())


def test_tiny_vae_of_another_latent_space(tiny_eps, tmp_path):
    from sdcli.convert.random_model import TINY_TAESD, build_random_taesd

    wide = tmp_path / "taesd-8ch"
    build_random_taesd(wide, dict(TINY_TAESD, latent_channels=8))
    deeper = tmp_path / "taesd-x4"
    build_random_taesd(deeper, dict(TINY_TAESD, encoder_block_out_channels=(16,) * 3, num_encoder_blocks=(1, 1, 1),
                                    decoder_block_out_channels=(16,) * 3, num_decoder_blocks=(1, 1, 1)))
    model = tmp_path / "model"
    shutil.copytree(tiny_eps.ov_dir, model)
    assert "8 channels, this model's 4" in one_line_error(run("convert", "--tiny-vae", wide, "--into", model))
    assert "1/4 of the image size, this model's 1/2" in one_line_error(run("convert", "--tiny-vae", deeper, "--into", model))
    assert not (model / "vae_decoder_tiny").exists()


def test_convert_usage_errors(tiny_eps, taesd_dir, tmp_path):
    assert "missing SOURCE" in one_line_error(run("convert"))
    assert "--into needs --tiny-vae" in one_line_error(run("convert", "--into", tiny_eps.ov_dir))
    assert "without SOURCE" in one_line_error(run("convert", tiny_eps.diffusers_dir, "--tiny-vae", taesd_dir,
                                                  "--into", tiny_eps.ov_dir))
    assert "model folder not found" in one_line_error(run("convert", "--tiny-vae", taesd_dir, "--into",
                                                          tmp_path / "nope"))


# --- tiled (issue 23): as diffusers' AutoencoderTiny after enable_tiling() ----------------

TILE = 48  # pixels: 24 latents (the tiny TAESD's factor is 2), blend 3 latents / 6 pixels, strides 21 / 42
MAX_DIFF = 2  # of 255


@pytest.fixture
def tiled_taesd(taesd):
    """The module's AutoencoderTiny with enable_tiling() at TILE (its spatial_scale_factor, 2**3
    whatever the model, set to this TAESD's 2), restored afterwards."""
    names = ("use_tiling", "spatial_scale_factor", "tile_sample_min_size", "tile_latent_min_size")
    saved = [getattr(taesd, n) for n in names]
    taesd.enable_tiling()
    taesd.spatial_scale_factor, taesd.tile_sample_min_size, taesd.tile_latent_min_size = 2, TILE, TILE // 2
    yield taesd
    for n, v in zip(names, saved):
        setattr(taesd, n, v)


def test_tiled_tiny_decode_and_encode_match_autoencoder_tiny(with_tiny, tiled_taesd):
    import torch

    from sdcli.engine.vae_tiling import Tiling, tiled_decode, tiled_encode, tiling_for
    from sdcli.imaging.image_io import to_pixels
    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import VaeDecoder, VaeEncoder
    from sdcli.runtime.core import Runtime

    folder = ModelFolder.open(with_tiny)
    runtime = Runtime("CPU", "f32", None)
    tiling = tiling_for(folder, "tiny", TILE)
    assert tiling == Tiling(TILE, TILE // 2, 0.125, tiny=True)
    decoder = VaeDecoder(runtime, folder, (-1, -1), "vae_decoder_tiny")  # one compiled model for every tile size
    encoder = VaeEncoder(runtime, folder, (-1, -1), "vae_encoder_tiny")
    z = np.random.default_rng(5).standard_normal((1, 4, 48, 56)).astype(np.float32) * 1.5
    calls = []
    ours = to_pixels(tiled_decode(decoder, z, tiling, lambda done, total: calls.append(total))).astype(int)
    x = np.random.default_rng(6).random((1, 3, 96, 112), dtype=np.float32) * 2 - 1
    ours_latents = tiled_encode(lambda tile: encoder(tile)[0], x, tiling)
    with torch.no_grad():
        want = to_pixels(tiled_taesd.decode(torch.from_numpy(z)).sample.numpy()).astype(int)
        want_latents = tiled_taesd.encode(torch.from_numpy(x)).latents.numpy()
    untiled = to_pixels(decoder(z)).astype(int)
    other = to_pixels(tiled_decode(decoder, -z, tiling)).astype(int)
    diff, moved = np.abs(ours - want).max(), np.abs(untiled - ours)
    scale = np.abs(want_latents).max()
    encode_diff = np.abs(ours_latents - want_latents).max() / scale
    encode_moved = np.abs(encoder(x)[0] - ours_latents).max() / scale
    print(f"tiny tiled decode vs AutoencoderTiny enable_tiling(): max {diff}; untiled differs by max {moved.max()} "
          f"mean {moved.mean():.2f}; {calls[-1]} tiles; encode relative max {encode_diff:.2e}, "
          f"untiled differs {encode_moved:.2e}")
    assert ours.shape == (96, 112, 3) and calls[-1] == 9 and ours_latents.shape == (1, 4, 48, 56)
    assert diff <= MAX_DIFF and moved.max() > 5 * MAX_DIFF  # the tiling is exercised
    assert np.abs(other - ours).mean() > 10  # other latents move it
    assert encode_diff <= 1e-4 and encode_moved > 1e-2
    # no larger than one stride (21 latents, 42 pixels): one tile, the whole decode's picture
    assert not tiling.decodes_tiled((21, 21)) and tiling.decodes_tiled((22, 21)) and tiling.encodes_tiled((43, 8))
    assert np.array_equal(to_pixels(tiled_decode(decoder, z[:, :, :21, :21], tiling)),
                          to_pixels(decoder(z[:, :, :21, :21])))


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_generate_tiny_vae_tiling_matches_diffusers(with_tiny, tiny_eps, tiled_taesd, init_image_file, tmp_path,
                                                    mode):
    """`sdcli generate --vae tiny --vae-tiling --vae-tile-size 48` against diffusers' pipeline with
    vae=AutoencoderTiny, enable_tiling() at the same tile size (96 x 96: 3 x 3 tiles; img2img at
    96 x 64 encodes in 3 x 2 tiles and decodes in 3 x 2)."""
    options = dict(steps=2, width=96, height=96) if mode == "txt2img" else \
        dict(steps=2, init_image=init_image_file, strength=0.6)
    want = reference.diffusers_pixels({**tiny_eps.pipe().components, "vae": tiled_taesd}, "euler", **options)
    ours = reference.sdcli_pixels(with_tiny, tmp_path / "tiled.png", "--vae", "tiny", "--vae-tiling",
                                  "--vae-tile-size", TILE, scheduler="euler", **options)
    whole = reference.sdcli_pixels(with_tiny, tmp_path / "whole.png", "--vae", "tiny", "--no-vae-tiling",
                                   scheduler="euler", **options)
    diff, moved = np.abs(ours - want).max(), np.abs(ours - whole).max()
    print(f"generate {mode} --vae tiny --vae-tiling vs diffusers AutoencoderTiny enable_tiling(): max {diff}; "
          f"vs untiled max {moved}")
    assert diff <= MAX_DIFF and moved > 5 * MAX_DIFF


def test_tiny_tiling_switched_on_when_a_whole_decode_would_not_fit(with_tiny, tmp_path, monkeypatch):
    from sdcli.engine import memory
    from sdcli.engine.engine import Engine
    from sdcli.engine.vae_tiling import Tiling

    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    engine = Engine(with_tiny, precision="f32", cache_dir=None)
    z = np.random.default_rng(7).standard_normal((1, 4, 48, 48)).astype(np.float32)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**12)
    whole = engine.decode(z, "tiny", None, TILE)
    assert engine.last_vae_tiling is None
    monkeypatch.setattr(memory, "available_bytes", lambda: 0)
    tiled = engine.decode(z, "tiny", None, TILE)
    assert engine.last_vae_tiling == Tiling(TILE, TILE // 2, 0.125, tiny=True)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() > 5 * MAX_DIFF
    assert np.array_equal(engine.decode(z, "tiny", True, TILE), tiled)
    assert np.array_equal(engine.decode(z, "tiny", False, TILE), whole)
    # a tile whose blend is not whole latents is refused before anything loads
    line = one_line_error(run("generate", "--model", with_tiny, "--prompt", "x", "--vae", "tiny", "--vae-tiling",
                              "--vae-tile-size", 40, "--output", tmp_path / "out.png"))
    assert "--vae-tile-size with --vae tiny must be a multiple of 16 from 32" in line and line.endswith("got 40")
