"""--guidance-rescale PHI: diffusers' guidance_rescale ("Common Diffusion Noise Schedules and
Sample Steps are Flawed", section 3.4), the guided prediction's standard deviation pulled
towards the text prediction's.  Same pixels as diffusers' StableDiffusionPipeline with
guidance_rescale on the tiny v-prediction model; stored in the PNG as "CFG Rescale phi" and
read back by --from-image; in batch rows and the server's requests.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from tests.reference import compare, diffusers_pixels, sdcli_pixels

PHI = 0.7
SIZE = dict(width=64, height=64)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdcli: error: "), result.stderr
    return lines[0]


def test_rescale_is_diffusers_rescale_noise_cfg():
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from sdcli.engine.denoise import rescale_guidance

    rng = np.random.default_rng(0)
    cfg = (rng.standard_normal((1, 4, 8, 12)) * 3).astype(np.float32)
    text = rng.standard_normal((1, 4, 8, 12)).astype(np.float32)
    for phi in (0.0, 0.3, PHI, 1.0):
        theirs = rescale_noise_cfg(torch.from_numpy(cfg), torch.from_numpy(text), guidance_rescale=phi).numpy()
        ours = rescale_guidance(cfg, text, phi)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    # phi 1: the standard deviation is the text prediction's
    assert rescale_guidance(cfg, text, 1.0).std(ddof=1) == pytest.approx(text.std(ddof=1), rel=1e-5)


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a"])
def test_guidance_rescale_matches_diffusers(tiny_vpred, scheduler, tmp_path, parity_log):
    components = tiny_vpred.pipe().components
    theirs = diffusers_pixels(components, scheduler, guidance_rescale=PHI, **SIZE)
    ours = sdcli_pixels(tiny_vpred.ov_dir, tmp_path / "out.png", "--guidance-rescale", PHI, scheduler=scheduler,
                        **SIZE)
    compare(ours, theirs, parity_log, model="v_pred", scheduler=scheduler, mode=f"rescale {PHI}", size="64x64")
    # the rescale did something here: without it, both make another picture
    plain = sdcli_pixels(tiny_vpred.ov_dir, tmp_path / "plain.png", scheduler=scheduler, **SIZE)
    assert np.abs(plain - ours).max() > 10
    assert np.abs(diffusers_pixels(components, scheduler, **SIZE) - theirs).max() > 10


def test_guidance_rescale_on_a_zero_snr_sdxl_model_matches_diffusers(tiny_sdxl_vpred, tmp_path, parity_log):
    """What guidance_rescale is for: a v-prediction model trained with zero terminal SNR
    (trailing spacing), here a tiny SDXL one, against StableDiffusionXLPipeline."""
    model = tiny_sdxl_vpred
    theirs = diffusers_pixels(model.components(), "euler", xl=True, guidance_rescale=PHI, **SIZE)
    ours = sdcli_pixels(model.ov_dir, tmp_path / "out.png", "--guidance-rescale", PHI, scheduler="euler", **SIZE)
    compare(ours, theirs, parity_log, model="sdxl v zero-snr", scheduler="euler", mode=f"rescale {PHI}", size="64x64")
    plain = sdcli_pixels(model.ov_dir, tmp_path / "plain.png", scheduler="euler", **SIZE)
    assert np.abs(plain - ours).max() > 10


def test_phi_changes_the_image_step_by_step(tiny_vpred, tmp_path):
    """More phi, further from the plain image; phi 0 is the plain image exactly."""
    plain = sdcli_pixels(tiny_vpred.ov_dir, tmp_path / "p.png", scheduler="euler", **SIZE)
    zero = sdcli_pixels(tiny_vpred.ov_dir, tmp_path / "z.png", "--guidance-rescale", "0", scheduler="euler", **SIZE)
    assert (plain == zero).all()
    distances = [np.abs(sdcli_pixels(tiny_vpred.ov_dir, tmp_path / f"{phi}.png", "--guidance-rescale", phi,
                                     scheduler="euler", **SIZE) - plain).mean() for phi in (0.3, 1.0)]
    assert 0 < distances[0] < distances[1]


def test_the_png_stores_phi_and_from_image_redoes_it(tiny_vpred, tmp_path):
    from sdcli.engine.parameters import settings_from_image
    from sdcli.imaging.image_io import read_png_text, read_rgb

    first = tmp_path / "first.png"
    sdcli_pixels(tiny_vpred.ov_dir, first, "--guidance-rescale", "0.5", **SIZE)
    text = read_png_text(first)["parameters"]
    assert "CFG Rescale phi: 0.5," in text
    assert settings_from_image(first)["guidance_rescale"] == 0.5
    again = tmp_path / "again.png"
    result = run("generate", "--from-image", first, "--model", tiny_vpred.ov_dir, "--output", again, "--quiet")
    assert result.exit_code == 0, result.output
    assert (read_rgb(first) == read_rgb(again)).all()
    assert read_png_text(again)["parameters"] == text
    plain = tmp_path / "plain.png"
    sdcli_pixels(tiny_vpred.ov_dir, plain, **SIZE)
    assert "CFG Rescale" not in read_png_text(plain)["parameters"]  # phi 0 is not written


def test_a1111_names_are_read_back():
    from sdcli.engine.parameters import settings_from_fields

    base = {"Steps": "20", "Sampler": "Euler", "CFG scale": "7", "Seed": "1", "Size": "512x512"}
    for field in ("CFG Rescale phi", "CFG Rescale φ", "CFG Rescale"):
        assert settings_from_fields("p", "", {**base, field: "0.25"})["guidance_rescale"] == 0.25
    assert "guidance_rescale" not in settings_from_fields("p", "", base)


def test_bad_phi_is_one_line(tiny_vpred, tmp_path):
    from sdcli.engine.request import GenerationRequest
    from sdcli.util.errors import UsageError

    for value in ("1.5", "-0.1", "nan"):
        result = run("generate", "--model", tiny_vpred.ov_dir, "--prompt", "x", "--guidance-rescale", value,
                     "--output", tmp_path / "x.png")
        assert result.exit_code == 2 and "--guidance-rescale" in result.output, result.output
    for value in (1.5, -0.1, float("nan")):
        with pytest.raises(UsageError, match="--guidance-rescale must be between 0 and 1"):
            GenerationRequest(prompt="x", guidance_rescale=value).validate()
    # a PNG that stores a phi out of range is refused like the flag
    from sdcli.imaging.image_io import save_png

    png = tmp_path / "bad.png"
    save_png(png, np.zeros((64, 64, 3), np.uint8),
             "x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, CFG Rescale phi: 3, Version: sdcli 0.1.0")
    line = one_line_error(run("generate", "--from-image", png, "--model", tiny_vpred.ov_dir, "--output",
                              tmp_path / "y.png"))
    assert "--guidance-rescale" in line
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_batch_rows_take_guidance_rescale(tiny_vpred, tmp_path):
    from sdcli.imaging.image_io import read_png_text, read_rgb

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat", "name": "a"}\n{"prompt": "a cat", "guidance_rescale": 0.5, "seed": 7, "name": "b"}\n'
                       '{"prompt": "a cat", "guidance_rescale": 2, "name": "c"}\n')
    out = tmp_path / "out"
    result = run("batch", prompts, "--output-dir", out, "--model", tiny_vpred.ov_dir, "--width", "64", "--height",
                 "64", "--steps", "3", "--seed", "1", "--guidance-rescale", "0.25", "--quiet", "--parallel", "1")
    assert result.exit_code == 1, result.output  # row c failed
    assert "p.jsonl:3: guidance_rescale" in result.stderr
    rows = {r["file"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert (rows["a.png"]["guidance_rescale"], rows["b.png"]["guidance_rescale"]) == (0.25, 0.5)
    assert "CFG Rescale phi: 0.25," in read_png_text(out / "a.png")["parameters"]
    single = tmp_path / "single.png"
    result = run("generate", "--model", tiny_vpred.ov_dir, "--prompt", "a cat", "--seed", "7", "--steps", "3",
                 "--width", "64", "--height", "64", "--guidance-rescale", "0.5", "--output", single, "--quiet")
    assert result.exit_code == 0, result.output
    assert (read_rgb(single) == read_rgb(out / "b.png")).all()
