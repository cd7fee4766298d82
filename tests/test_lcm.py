"""Latent Consistency Models: the numpy LCM scheduler and guidance embedding against diffusers'.

(Model-level parity with diffusers' LCM pipelines and openvino-genai is further down.)
"""
from __future__ import annotations

import numpy as np
import pytest

from sdcli.lcm import guidance_scale_embedding
from sdcli.rng import TorchRNG
from sdcli.schedulers import LCMScheduler, create_scheduler

# LCM_Dreamshaper_v7's scheduler_config.json
LCM_CONFIG = {
    "_class_name": "LCMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def _diffusers_lcm(config):
    import diffusers

    return diffusers.LCMScheduler.from_config(config)


def test_defaults_are_diffusers_defaults():
    import inspect

    import diffusers

    params = inspect.signature(diffusers.LCMScheduler.__init__).parameters
    assert LCMScheduler.defaults == {k: p.default for k, p in params.items() if k != "self"}
    assert create_scheduler(None, LCM_CONFIG).config == {
        k: v for k, v in _diffusers_lcm(LCM_CONFIG).config.items() if k in LCMScheduler.defaults
    }


CASES = [
    # (config changes, steps, strength)
    ({}, 4, 1.0),
    ({}, 1, 1.0),
    ({}, 8, 1.0),
    ({}, 4, 0.5),
    ({}, 3, 0.3),
    ({"prediction_type": "v_prediction"}, 4, 1.0),
    ({"prediction_type": "sample", "clip_sample": True}, 4, 1.0),
    ({"original_inference_steps": 100, "timestep_scaling": 5.0}, 6, 0.8),
    ({"set_alpha_to_one": False, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 5, 1.0),
    ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, 4, 1.0),
]


@pytest.mark.parametrize("changes,steps,strength", CASES)
def test_steps_match_diffusers(changes, steps, strength):
    """The latents after every step, from the same model outputs and noise, within 1e-5 relative."""
    import torch

    config = {**LCM_CONFIG, **changes}
    ours = create_scheduler("lcm", config)
    theirs = _diffusers_lcm(config)
    ours.set_timesteps(steps, strength=strength)
    theirs.set_timesteps(steps, strength=strength)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())

    shape = (1, 4, 8, 8)
    data = np.random.default_rng(1)
    sample = data.standard_normal(shape).astype(np.float32)
    ours_x, theirs_x = sample, torch.from_numpy(sample.copy())
    rng, generator = TorchRNG(11), torch.Generator().manual_seed(11)
    worst = 0.0
    for t in ours.timesteps:
        out = data.standard_normal(shape).astype(np.float32)  # stands in for the UNet
        ours_x = ours.step(out, t, ours_x, rng)
        theirs_x = theirs.step(torch.from_numpy(out), torch.tensor(t), theirs_x, generator=generator).prev_sample
        ref = theirs_x.numpy()
        worst = max(worst, float(np.abs(ours_x - ref).max() / np.abs(ref).max()))
        np.testing.assert_allclose(ours_x, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the last step returns the denoised estimate, with no noise drawn after it
    assert ours.step_index == steps
    print(f"lcm {changes} steps={steps} strength={strength}: max relative difference {worst:.2e}")


def test_begin_index_as_the_sd_img2img_pipeline_sets_it():
    """An LCM-LoRA in diffusers' StableDiffusionImg2ImgPipeline cuts the schedule and sets the
    begin index; the last step is still the last of the schedule."""
    import torch

    ours, theirs = create_scheduler("lcm", LCM_CONFIG), _diffusers_lcm(LCM_CONFIG)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    ours.set_begin_index(3)
    theirs.set_begin_index(3)
    x = np.ones((1, 4, 2, 2), np.float32)
    ours_x, theirs_x = x, torch.from_numpy(x)
    rng, generator = TorchRNG(0), torch.Generator().manual_seed(0)
    for t in ours.timesteps[3:]:
        out = np.full_like(x, 0.3)
        ours_x = ours.step(out, t, ours_x, rng)
        theirs_x = theirs.step(torch.from_numpy(out), torch.tensor(t), theirs_x, generator=generator).prev_sample
    np.testing.assert_allclose(ours_x, theirs_x.numpy(), rtol=1e-5)


def test_add_noise_matches_diffusers():
    import torch

    ours, theirs = create_scheduler("lcm", LCM_CONFIG), _diffusers_lcm(LCM_CONFIG)
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
    ref = theirs.add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.tensor([759])).numpy()
    np.testing.assert_allclose(ours.add_noise(x, noise, 759), ref, rtol=1e-6, atol=1e-6)


def test_too_many_steps_for_the_strength_is_an_error():
    ours = create_scheduler("lcm", LCM_CONFIG)
    with pytest.raises(ValueError, match="original_inference_steps x strength"):
        ours.set_timesteps(4, strength=0.06)  # int(50 * 0.06) = 3 timesteps to pick 4 from
    with pytest.raises(ValueError, match="original_inference_steps"):
        ours.set_timesteps(51)


@pytest.mark.parametrize("guidance", [8.0, 1.0, 1.5, 0.0, 10.5])
@pytest.mark.parametrize("dim", [256, 32, 33])
def test_guidance_embedding_matches_diffusers(guidance, dim):
    import torch
    from diffusers import LatentConsistencyModelPipeline

    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, torch.tensor(guidance - 1).repeat(1), embedding_dim=dim).numpy()
    ours = guidance_scale_embedding(guidance - 1, dim)
    assert ours.shape == ref.shape == (1, dim) and ours.dtype == np.float32
    # sin/cos of angles up to 1000 w: one float32 ulp of such an angle is up to 5e-4
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    assert np.mean(ours == ref) > 0.85
