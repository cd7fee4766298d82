"""SDXL base + refiner (`--refiner DIR --refiner-switch F`) against diffusers' ensemble of
experts: StableDiffusionXLPipeline(denoising_end=F, output_type="latent") handing its latents to
StableDiffusionXLImg2ImgPipeline(denoising_start=F), one torch generator through both."""
from __future__ import annotations

import numpy as np
import pytest

from tests.reference import NEGATIVE, PROMPT, SEED, compare, diffusers_scheduler, sdcli_pixels, to_pixels


@pytest.fixture(scope="module")
def models(tiny_sdxl, tiny_sdxl_refiner):
    return tiny_sdxl, tiny_sdxl_refiner


def diffusers_handoff(base, refiner, scheduler: str, steps: int, switch: float, width=64, height=64) -> np.ndarray:
    import diffusers
    import torch

    first = diffusers.StableDiffusionXLPipeline(**base.components())
    second = diffusers.StableDiffusionXLImg2ImgPipeline(**refiner.components(), requires_aesthetics_score=True,
                                                         force_zeros_for_empty_prompt=False)
    for pipe in (first, second):
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = diffusers_scheduler(scheduler, pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(SEED)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
                  generator=generator)
    latents = first(**common, width=width, height=height, denoising_end=switch, output_type="latent").images
    return to_pixels(second(**common, image=latents, denoising_start=switch, output_type="np").images)


@pytest.mark.parametrize("scheduler,steps,switch", [("euler", 10, 0.8), ("dpmpp_2m", 10, 0.6), ("euler_a", 8, 0.8),
                                                    ("heun", 10, 0.7)])
def test_base_to_refiner_handoff_matches_diffusers(models, scheduler, steps, switch, tmp_path, parity_log):
    base, refiner = models
    theirs = diffusers_handoff(base, refiner, scheduler, steps, switch)
    ours = sdcli_pixels(base.ov_dir, tmp_path / "out.png", "--refiner", refiner.ov_dir, "--refiner-switch", switch,
                        scheduler=scheduler, steps=steps, width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl + refiner", scheduler=scheduler, mode=f"switch {switch}",
            size="64x64")
    alone = sdcli_pixels(base.ov_dir, tmp_path / "base.png", scheduler=scheduler, steps=steps, width=64, height=64)
    assert np.abs(alone - ours).max() > 10  # the refiner did something


def test_refiner_errors_are_one_line(models, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from tests.reference import generate_args

    base, refiner = models
    for extra, message in ((["--refiner", str(tmp_path / "none")], "not found"),
                           (["--refiner", str(refiner.ov_dir), "--refiner-switch", "1"], "--refiner-switch"),
                           (["--refiner", str(refiner.ov_dir), "--refiner-switch", "0.001"], "no step")):
        result = CliRunner().invoke(app, generate_args(base.ov_dir, tmp_path / "x.png", *extra, steps=4))
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_memory_estimate_counts_the_refiner_s_unet(models):
    from sdcli.engine import memory
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    base, refiner = models
    alone = Engine(base.ov_dir, precision="f32")
    both = Engine(base.ov_dir, precision="f32", refiner=refiner.ov_dir)
    request = GenerationRequest(prompt="x", width=64, height=64)
    extra = memory.refiner_unet_bytes(both)
    assert extra > memory.COMPONENT and memory.refiner_unet_bytes(alone) == 0
    folder_only = memory.estimate(both.folder, 64, 64)
    with_refiner = memory.estimate(both.folder, 64, 64, held=memory.held_bytes(both, request))
    assert with_refiner.stages["denoising"] - folder_only.stages["denoising"] == extra
    assert both.check_fits(request) is None or both.check_fits(request).stages["denoising"] > \
        alone.check_fits(request).stages["denoising"]


def test_the_vae_a_run_names_none_of_is_the_refiner_s_default(models, tmp_path):
    """The refiner decodes, so its folder's default VAE applies: a base converted with
    `--default-vae tiny` and a refiner without a tiny VAE make the full VAE's image."""
    import shutil

    from typer.testing import CliRunner

    from sdcli.cli.app import app

    base, refiner = models
    folder = tmp_path / "base"
    shutil.copytree(base.ov_dir, folder)
    (folder / "vae_decoder_tiny").symlink_to(folder / "vae_decoder")  # a tiny VAE this run never decodes with
    result = CliRunner().invoke(app, ["convert", "--into", str(folder), "--default-vae", "tiny", "--quiet"])
    assert result.exit_code == 0, result.output
    common = ("--refiner", refiner.ov_dir, "--refiner-switch", 0.5)
    ours = sdcli_pixels(folder, tmp_path / "default.png", *common, steps=4, width=64, height=64)
    full = sdcli_pixels(folder, tmp_path / "full.png", *common, "--vae", "full", steps=4, width=64, height=64)
    assert np.array_equal(ours, full)
