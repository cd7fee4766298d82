"""Heun's method in sigma space (Karras et al. 2022, Algorithm 1 without churn): an Euler step, then a
correction with the derivative at its end point. Two model calls per step, so the timestep array
repeats every timestep but the first; mirrors diffusers' HeunDiscreteScheduler."""

from __future__ import annotations

import numpy as np

from .base import F32, SchedulerConfigError, as_float32, check_prediction_type, check_spacing
from .euler import SigmaScheduler, float_timesteps
from .sigma_utils import sigma_schedule, train_sigmas


class HeunDiscreteScheduler(SigmaScheduler):
    name = "heun"
    diffusers_class = "HeunDiscreteScheduler"
    order = 2
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }

    def _check_config(self) -> None:
        cfg = self.config
        check_prediction_type(self, ("epsilon", "v_prediction", "sample"))
        check_spacing(cfg["timestep_spacing"])
        if cfg["use_beta_sigmas"]:
            raise SchedulerConfigError("heun: use_beta_sigmas is not supported")
        if bool(cfg["use_karras_sigmas"]) and bool(cfg["use_exponential_sigmas"]):
            raise SchedulerConfigError("heun: use only one of use_karras_sigmas and use_exponential_sigmas")

    def _setup(self) -> None:
        self.sigmas = np.concatenate([train_sigmas(self.alphas_cumprod)[::-1], np.zeros(1, dtype=F32)]).astype(F32)
        self.timesteps = np.linspace(0, len(self) - 1, len(self), dtype=np.float32)[::-1].copy()
        self._step_index = None
        self._begin_index = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.prev_derivative: np.ndarray | None = None
        self.dt = None  # set between the two halves of a step
        self.sample: np.ndarray | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self.dt is None

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        self.num_inference_steps = n
        cfg = self.config
        timesteps = float_timesteps(cfg, n)
        sigmas, timesteps, _ = sigma_schedule(cfg, timesteps, self.alphas_cumprod)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]]).astype(F32)
        timesteps = np.asarray(timesteps)
        self.timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)]).astype(F32)
        self._reset_state()
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        self._begin_step(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        i = self._step_index
        first = self.state_in_first_order
        if first:
            sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        else:
            sigma, sigma_next = self.sigmas[i - 1], self.sigmas[i]
        # no churn: sigma_hat == sigma; x0 is evaluated at the sigma the model was called with
        pred_x0 = self._pred_original(model_output, sample, sigma if first else sigma_next)
        if self.config["clip_sample"]:
            limit = F32(self.config["clip_sample_range"])
            pred_x0 = np.clip(pred_x0, -limit, limit)

        if first:
            derivative = (sample - pred_x0) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            derivative = (self.prev_derivative + (sample - pred_x0) / sigma_next) / F32(2.0)
            dt, sample = self.dt, self.sample
            self._reset_state()
        self._step_index = i + 1
        return sample + derivative * dt
