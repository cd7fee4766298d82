"""DDIM (denoising diffusion implicit models, arXiv 2010.02502), deterministic (eta = 0);
mirrors diffusers' DDIMScheduler."""

from __future__ import annotations

import numpy as np

from .base import (
    F32,
    Scheduler,
    SchedulerConfigError,
    as_float32,
    check_prediction_type,
    check_spacing,
    leading_timesteps,
    linspace_timesteps,
    scalar_of,
    trailing_timesteps,
)


class DDIMScheduler(Scheduler):
    name = "ddim"
    diffusers_class = "DDIMScheduler"
    order = 1
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }

    def _check_config(self) -> None:
        check_prediction_type(self, ("epsilon", "sample", "v_prediction"))
        check_spacing(self.config["timestep_spacing"])
        if self.config["thresholding"]:
            raise SchedulerConfigError("ddim: thresholding=True (dynamic thresholding) is not supported")

    def _setup(self) -> None:
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.timesteps = np.arange(0, len(self))[::-1].astype(np.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        n_train = len(self)
        if n > n_train:
            raise ValueError(f"ddim: num_inference_steps={n} exceeds num_train_timesteps={n_train}")
        self.num_inference_steps = n
        spacing = self.config["timestep_spacing"]
        if spacing == "linspace":
            self.timesteps = linspace_timesteps(n_train, n)[::-1].copy()
        elif spacing == "leading":
            self.timesteps = leading_timesteps(n_train, n, self.config["steps_offset"])[::-1].copy()
        else:
            self.timesteps = trailing_timesteps(n_train, n)

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        self._require_timesteps()
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        t = int(scalar_of(timestep))
        # diffusers always steps back by num_train // n, whatever the spacing
        prev_t = t - len(self) // self.num_inference_steps

        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = F32(1.0) - a_t

        pt = self.config["prediction_type"]
        if pt == "epsilon":
            pred_x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
            pred_eps = model_output
        elif pt == "sample":
            pred_x0 = model_output
            pred_eps = (sample - np.sqrt(a_t) * pred_x0) / np.sqrt(b_t)
        else:  # v_prediction
            pred_x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
            pred_eps = np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample

        if self.config["clip_sample"]:
            limit = F32(self.config["clip_sample_range"])
            pred_x0 = np.clip(pred_x0, -limit, limit)

        # eta = 0: no noise term, the direction coefficient is sqrt(1 - a_prev)
        direction = np.sqrt(F32(1.0) - a_prev) * pred_eps
        return np.sqrt(a_prev) * pred_x0 + direction
