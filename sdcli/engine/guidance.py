"""Classifier-free guidance as diffusers' Stable Diffusion pipelines combine it (the model
families that combine it otherwise override ModelFamily.denoiser_output)."""
from __future__ import annotations

import numpy as np


def rescale_guidance(noise_cfg: np.ndarray, noise_text: np.ndarray, phi: float) -> np.ndarray:
    """diffusers' rescale_noise_cfg (guidance_rescale; "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", section 3.4): the guided prediction scaled to the text prediction's
    standard deviation (over all but the batch axis, with Bessel's correction as torch's std),
    mixed in by `phi`, which keeps high guidance from over-exposing."""
    axes = tuple(range(1, noise_cfg.ndim))
    std_text = noise_text.astype(np.float64).std(axis=axes, keepdims=True, ddof=1).astype(np.float32)
    std_cfg = noise_cfg.astype(np.float64).std(axis=axes, keepdims=True, ddof=1).astype(np.float32)
    rescaled = noise_cfg * (std_text / std_cfg)
    return (np.float32(phi) * rescaled + np.float32(1 - phi) * noise_cfg).astype(np.float32)


def classifier_free(out: np.ndarray, guidance_scale: float, guidance_rescale: float = 0.0) -> np.ndarray:
    """The guided prediction from a [negative, prompt] pair of predictions: uncond + scale *
    (cond - uncond), then rescaled by `guidance_rescale` (phi of rescale_guidance; 0: not)."""
    uncond, cond = out[0:1], out[1:2]
    out = uncond + np.float32(guidance_scale) * (cond - uncond)
    if guidance_rescale > 0.0:
        out = rescale_guidance(out, cond, guidance_rescale)
    return out
