"""Euler ancestral sampler: an Euler step down to sigma_down plus fresh noise of size sigma_up each step;
mirrors diffusers' EulerAncestralDiscreteScheduler (the noise is drawn where diffusers calls randn_tensor)."""

from __future__ import annotations

import numpy as np

from .base import F32, as_float32, check_prediction_type, check_spacing
from .euler import SigmaScheduler, float_timesteps


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    name = "euler_a"
    diffusers_class = "EulerAncestralDiscreteScheduler"
    order = 1
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }

    def _check_config(self) -> None:
        check_prediction_type(self, ("epsilon", "v_prediction"))
        check_spacing(self.config["timestep_spacing"])

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        self.num_inference_steps = n
        timesteps = float_timesteps(self.config, n)
        train_sigmas = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.timesteps = timesteps
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        if rng is None:
            raise ValueError("euler_a: step() needs an rng (anything with .randn(shape)) for the ancestral noise")
        self._begin_step(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        i = self._step_index
        sigma = self.sigmas[i]
        pred_x0 = self._pred_original(model_output, sample, sigma)

        sigma_to = self.sigmas[i + 1]
        sigma_sq, to_sq = sigma * sigma, sigma_to * sigma_to
        sigma_up = np.sqrt(to_sq * (sigma_sq - to_sq) / sigma_sq)
        sigma_down = np.sqrt(to_sq - sigma_up * sigma_up)

        derivative = (sample - pred_x0) / sigma
        prev = sample + derivative * (sigma_down - sigma)
        noise = as_float32(rng.randn(model_output.shape))
        self._step_index = i + 1
        return prev + noise * sigma_up
