"""The oracle: `sdcli generate --rng torch --precision f32` gives diffusers' pixels.

Same tiny random weights, prompt, scheduler, steps (10), seed and size; max difference <= 2 of 255
(the runners and the comparison: tests/reference.py).
"""
from __future__ import annotations

import pytest

from tests.reference import SCHEDULERS, compare, diffusers_pixels, sdcli_pixels


# The sizes and strengths on tiny_eps, fewer on tiny_vpred: the prediction type changes the scheduler's
# arithmetic, not how sizes or strengths are handled (tiny_vpred keeps a square txt2img, and img2img's
# 96x64 at 0.6 and 1.0); the suite's time is bounded (25 minutes on 2 cores).
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("model_name,width,height", [("tiny_eps", 64, 64), ("tiny_eps", 96, 64),
                                                     ("tiny_vpred", 64, 64)])
def test_txt2img_matches_diffusers(request, model_name, scheduler, width, height, tmp_path, parity_log):
    model = request.getfixturevalue(model_name)
    theirs = diffusers_pixels(model.pipe().components, scheduler, width=width, height=height)
    ours = sdcli_pixels(model.ov_dir, tmp_path / "out.png", scheduler=scheduler, width=width, height=height)
    compare(ours, theirs, parity_log, model=model.prediction_type, scheduler=scheduler, mode="txt2img",
            size=f"{width}x{height}")


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("model_name,strength", [("tiny_eps", 0.3), ("tiny_eps", 0.6), ("tiny_eps", 1.0),
                                                 ("tiny_vpred", 0.6), ("tiny_vpred", 1.0)])
def test_img2img_matches_diffusers(request, model_name, scheduler, strength, init_image_file, tmp_path, parity_log):
    model = request.getfixturevalue(model_name)
    theirs = diffusers_pixels(model.pipe().components, scheduler, init_image=init_image_file, strength=strength)
    ours = sdcli_pixels(model.ov_dir, tmp_path / "out.png", scheduler=scheduler, init_image=init_image_file,
                        strength=strength)
    compare(ours, theirs, parity_log, model=model.prediction_type, scheduler=scheduler,
            mode=f"img2img {strength}", size="96x64")


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m"])
def test_sd2_style_model_matches_diffusers(tiny_sd2, scheduler, init_image_file, tmp_path, parity_log):
    theirs = diffusers_pixels(tiny_sd2.pipe().components, scheduler, width=64, height=64)
    ours = sdcli_pixels(tiny_sd2.ov_dir, tmp_path / "out.png", scheduler=scheduler, width=64, height=64)
    compare(ours, theirs, parity_log, model=tiny_sd2.prediction_type, scheduler=scheduler, mode="txt2img", size="64x64")
    theirs = diffusers_pixels(tiny_sd2.pipe().components, scheduler, init_image=init_image_file, strength=0.6)
    ours = sdcli_pixels(tiny_sd2.ov_dir, tmp_path / "out.png", scheduler=scheduler, init_image=init_image_file,
                        strength=0.6)
    compare(ours, theirs, parity_log, model=tiny_sd2.prediction_type, scheduler=scheduler, mode="img2img 0.6",
            size="96x64")
