"""Inpainting (`--mask`): parity with diffusers' StableDiffusionInpaintPipeline at
--mask-blur 0, for a dedicated 9-channel inpainting UNet and for an ordinary 4-channel one;
A1111's mask blur and overlay; mask files; bad input."""
from __future__ import annotations

import os
import sys
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import blur_mask, read_mask, read_png_text, read_rgb
from tests.models import InpaintModel, build_tiny_inpaint
from tests.reference import compare, diffusers_pixels, sdcli_pixels

STEPS = 6
SEED = 4321


@pytest.fixture(scope="session")
def tiny_inpaint(tmp_path_factory) -> InpaintModel:
    """A tiny random-weight dedicated inpainting model (9-channel UNet), converted."""
    return build_tiny_inpaint(tmp_path_factory.mktemp("inpaint-models"))


def diffusers_inpaint(components, scheduler, init_path, mask_path, strength, width, height) -> np.ndarray:
    return diffusers_pixels(components, scheduler, steps=STEPS, seed=SEED, init_image=init_path, mask=mask_path,
                            strength=strength, width=width, height=height)


def sdcli_inpaint(model_dir, scheduler, init_path, mask_path, strength, out, blur=0, extra=()) -> np.ndarray:
    return sdcli_pixels(model_dir, out, *extra, steps=STEPS, seed=SEED, scheduler=scheduler, init_image=init_path,
                        mask=mask_path, mask_blur=blur, strength=strength)


WIDE, SQUARE = (96, 64), (64, 64)
# every scheduler at both strengths; sizes alternate so that each scheduler sees both
CASES_9 = [("pndm", 0.6, WIDE), ("pndm", 1.0, SQUARE), ("euler", 0.6, SQUARE), ("euler", 1.0, WIDE),
           ("euler_a", 0.6, WIDE), ("euler_a", 1.0, SQUARE), ("ddim", 0.6, SQUARE), ("ddim", 1.0, WIDE)]


@pytest.mark.parametrize("scheduler,strength,size", CASES_9, ids=[f"{s}-{st}-{w}x{h}" for s, st, (w, h) in CASES_9])
def test_inpainting_unet_matches_diffusers(tiny_inpaint, inpaint_files, scheduler, strength, size, tmp_path, parity_log):
    init_path, mask_path = inpaint_files[size]
    theirs = diffusers_inpaint(tiny_inpaint.components(), scheduler, init_path, mask_path, strength, *size)
    ours = sdcli_inpaint(tiny_inpaint.ov_dir, scheduler, init_path, mask_path, strength, tmp_path / "out.png")
    compare(ours, theirs, parity_log, model="inpaint 9ch", scheduler=scheduler, mode=f"inpaint {strength}",
            size=f"{size[0]}x{size[1]}")


CASES_4 = [("pndm", 1.0, WIDE), ("ddim", 0.6, SQUARE), ("euler", 0.6, WIDE), ("euler_a", 1.0, WIDE),
           ("euler_a", 0.6, SQUARE)]


@pytest.mark.parametrize("scheduler,strength,size", CASES_4, ids=[f"{s}-{st}-{w}x{h}" for s, st, (w, h) in CASES_4])
def test_ordinary_unet_inpainting_matches_diffusers(tiny_eps, inpaint_files, scheduler, strength, size, tmp_path, parity_log):
    init_path, mask_path = inpaint_files[size]
    theirs = diffusers_inpaint(dict(tiny_eps.pipe().components), scheduler, init_path, mask_path, strength, *size)
    ours = sdcli_inpaint(tiny_eps.ov_dir, scheduler, init_path, mask_path, strength, tmp_path / "out.png")
    compare(ours, theirs, parity_log, model="inpaint 4ch", scheduler=scheduler, mode=f"inpaint {strength}",
            size=f"{size[0]}x{size[1]}")


@pytest.mark.parametrize("model_name", ["tiny_eps", "tiny_inpaint"])
def test_mask_blur_lays_the_result_over_the_original(request, model_name, inpaint_files, tmp_path):
    """--mask-blur > 0: pixels the blurred mask leaves at 0 are the original's exactly; those at 1
    are the model's; the PNG says `Mask blur`."""
    model = request.getfixturevalue(model_name)
    init_path, mask_path = inpaint_files[(96, 64)]
    out = tmp_path / "blur.png"
    ours = sdcli_inpaint(model.ov_dir, "euler", init_path, mask_path, 0.6, out, blur=2, extra=["--steps", "3"])
    original = read_rgb(init_path).astype(np.int16)
    soft = blur_mask(read_mask(mask_path), 2)
    keep = soft == 0
    assert keep.sum() > 1000 and (ours[keep] == original[keep]).all()
    assert np.abs(ours[soft > 0.99] - original[soft > 0.99]).max() > 20  # repainted
    assert "Mask blur: 2" in read_png_text(out)["parameters"]
    unblended = sdcli_inpaint(model.ov_dir, "euler", init_path, mask_path, 0.6, tmp_path / "hard.png", blur=0,
                              extra=["--steps", "3"])
    assert (unblended[keep] != original[keep]).any()  # the VAE changes the kept region without the overlay


def test_mask_files(tmp_path):
    import cv2

    h, w = 10, 12
    gray = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    assert np.allclose(read_mask(tmp_path / "gray.png"), gray / 255.0, atol=1e-6)
    # RGB: luminance (PIL's convert("L") weights)
    bgr = np.zeros((h, w, 3), np.uint8)
    bgr[:, :, 2] = 255  # red
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    assert abs(read_mask(tmp_path / "red.png").mean() - 0.299) < 0.01
    cv2.imwrite(str(tmp_path / "red.jpg"), bgr)
    assert abs(read_mask(tmp_path / "red.jpg").mean() - 0.299) < 0.02
    # RGBA with transparency: alpha; fully opaque RGBA: luminance
    bgra = np.zeros((h, w, 4), np.uint8)
    bgra[:, :6, 3] = 255
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    m = read_mask(tmp_path / "alpha.png")
    assert (m[:, :6] == 1).all() and (m[:, 6:] == 0).all()
    bgra[:, :, 3] = 255
    bgra[:, :, :3] = 255
    cv2.imwrite(str(tmp_path / "opaque.png"), bgra)
    assert (read_mask(tmp_path / "opaque.png") == 1).all()
    # 16-bit
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((h, w), 40000, np.uint16))
    assert np.allclose(read_mask(tmp_path / "g16.png"), 40000 / 65535, atol=1e-6)


def test_blur_mask_is_a1111s():
    import cv2

    m = np.zeros((41, 41), np.float32)
    m[20, 20] = 1.0
    assert (blur_mask(m, 0) == m).all()
    b = blur_mask(m, 3)
    k = cv2.getGaussianKernel(2 * int(2.5 * 3 + 0.5) + 1, 3).astype(np.float32)
    expected = np.zeros_like(m)
    r = len(k) // 2
    expected[20 - r : 21 + r, 20 - r : 21 + r] = k @ k.T
    assert np.allclose(b, expected, atol=1e-6)


def test_mask_of_another_size_is_resized(tiny_inpaint, inpaint_files, tmp_path):
    import cv2

    init_path, _ = inpaint_files[(96, 64)]
    mask = np.zeros((50, 30), np.uint8)
    mask[10:40, 5:25] = 255
    mask_path = tmp_path / "odd.png"
    cv2.imwrite(str(mask_path), mask)
    ours = sdcli_inpaint(tiny_inpaint.ov_dir, "euler", init_path, mask_path, 1.0, tmp_path / "o.png", blur=4,
                         extra=["--steps", "2"])
    assert ours.shape == (64, 96, 3)
    original = read_rgb(init_path).astype(np.int16)
    assert (ours[:, :4] == original[:, :4]).all()  # beyond the blur of the stretched mask (columns 16..80)
    assert np.abs(ours[20:40, 40:60] - original[20:40, 40:60]).max() > 20  # repainted


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdcli", *map(str, args)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)


def test_bad_masks_exit_2_with_one_line(tiny_inpaint, inpaint_files, tmp_path):
    init_path, mask_path = inpaint_files[(64, 64)]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    base = ["generate", "--model", tiny_inpaint.ov_dir, "--prompt", "x", "--steps", "1", "--seed", "1",
            "--output", tmp_path / "o.png"]
    cases = [
        ([*base, "--mask", mask_path], "--mask needs --init-image"),
        ([*base, "--init-image", init_path, "--mask", tmp_path / "missing.png"], "mask not found"),
        ([*base, "--init-image", init_path, "--mask", empty], "the file is empty"),
        ([*base, "--init-image", init_path, "--mask", text], "as an image"),
        ([*base, "--width", "64", "--height", "64"], "inpainting model"),  # a 9-channel UNet without --mask
    ]
    for args, expected in cases:
        r = _run(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sdcli: error:") and expected in lines[0], r.stderr
        assert not (tmp_path / "o.png").exists()


def test_from_image_reads_the_mask_blur(tiny_eps, inpaint_files, tmp_path):
    """An inpainting PNG stores Mask blur; --from-image with the image and mask passed again
    makes it byte for byte without repeating --mask-blur."""
    init, mask = inpaint_files[(64, 64)]
    first = tmp_path / "first.png"
    sdcli_inpaint(tiny_eps.ov_dir, "euler", init, mask, 0.7, first, blur=5)
    again = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--from-image", str(first),
                                      "--init-image", str(init), "--mask", str(mask), "--output", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == first.read_bytes()
    blur0 = tmp_path / "blur0.png"
    sdcli_inpaint(tiny_eps.ov_dir, "euler", init, mask, 0.7, blur0, blur=0)
    assert blur0.read_bytes() != first.read_bytes()  # the blur matters, so the match above means something
