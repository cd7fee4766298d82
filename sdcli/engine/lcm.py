"""Latent Consistency Models: what sets them apart from the engine's ordinary path.

An LCM UNet (config `time_cond_proj_dim`, IR input `timestep_cond`) was distilled with the
guidance baked in: it takes the guidance scale as an embedding, runs one batch-1 call per step
(no classifier-free guidance batch, so no negative prompt) and steps with the LCM scheduler.
"""
from __future__ import annotations

import numpy as np

# diffusers' LatentConsistencyModelPipeline defaults (openvino-genai's too)
LCM_STEPS = 4
LCM_GUIDANCE = 8.5
# An LCM-LoRA (ordinary UNet, LCM scheduler) is meant to run without classifier-free guidance.
LCM_LORA_GUIDANCE = 1.0


def guidance_scale_embedding(w: float, embedding_dim: int) -> np.ndarray:
    """diffusers' get_guidance_scale_embedding for one guidance weight `w` (the pipelines pass
    guidance_scale - 1): sinusoids of 1000 w, shape [1, embedding_dim], float32.

    The exponentials and sinusoids are taken in float64 and rounded, which lands on torch's
    float32 values more often than numpy's float32 functions do."""
    f32 = np.float32
    half = embedding_dim // 2
    rate = f32(np.log(np.float64(10000.0))) / f32(half - 1)
    freqs = np.exp((np.arange(half, dtype=f32) * -rate).astype(np.float64)).astype(f32)
    angles = (f32(f32(w) * f32(1000.0)) * freqs).astype(np.float64)
    emb = np.concatenate([np.sin(angles), np.cos(angles)]).astype(f32)
    if embedding_dim % 2:
        emb = np.concatenate([emb, np.zeros(1, dtype=f32)])
    return emb[None, :]


def lcm_defaults(folder, scheduler: str | None) -> tuple[int, float] | None:
    """(steps, guidance scale) for a run that gives neither: an LCM model's (4, 8.5); an
    LCM-LoRA's, i.e. an ordinary UNet with the lcm scheduler, (4, 1.0); None otherwise."""
    if folder.is_lcm:
        return LCM_STEPS, LCM_GUIDANCE
    if scheduler == "lcm" or (scheduler is None and folder.scheduler_config.get("_class_name") == "LCMScheduler"):
        return LCM_STEPS, LCM_LORA_GUIDANCE
    return None
