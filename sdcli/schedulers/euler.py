"""Euler sampler in sigma space (Karras et al. 2022, Algorithm 2 without churn); mirrors diffusers'
EulerDiscreteScheduler. Also holds the sigma-space machinery shared with Euler ancestral."""

from __future__ import annotations

import numpy as np

from .base import (
    F32,
    Scheduler,
    SchedulerConfigError,
    as_float32,
    check_prediction_type,
    check_spacing,
    scalar_of,
    torch_linspace_f32,
)
from .sigma_utils import exponential_sigmas, karras_sigmas, sigma_to_t, train_sigmas


def float_timesteps(config: dict, num_inference_steps: int) -> np.ndarray:
    """Descending float32 timesteps of the sigma-space schedulers for the configured spacing."""
    n_train = int(config["num_train_timesteps"])
    n = num_inference_steps
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = n_train // n
        ts = (np.arange(0, n) * ratio).round()[::-1].astype(np.float32)
        return ts + F32(config["steps_offset"])
    ratio = n_train / n
    return np.arange(n_train, 0, -ratio).round().astype(np.float32) - F32(1.0)


class SigmaScheduler(Scheduler):
    """Shared parts of the Euler-type schedulers: sigmas, step index / begin index, scaling, add_noise."""

    def _train_sigmas(self) -> np.ndarray:
        return train_sigmas(self.alphas_cumprod)

    def _setup(self) -> None:
        if self.config["rescale_betas_zero_snr"]:
            # as diffusers: keep the final sigma finite (alphas_cumprod would be exactly 0 there)
            self.alphas_cumprod[-1] = F32(2.0**-24)
        self.sigmas = np.concatenate([self._train_sigmas()[::-1], np.zeros(1, dtype=F32)]).astype(F32)
        self.timesteps = np.linspace(0, len(self) - 1, len(self), dtype=np.float64)[::-1].astype(np.float32)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = self.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(max_sigma)
        return float(np.sqrt(max_sigma * max_sigma + F32(1.0)))

    def set_begin_index(self, begin_index: int) -> None:
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps: np.ndarray | None = None) -> int:
        """Position of ``timestep`` in the schedule; the second match if it occurs more than once (so that
        img2img starting mid-schedule does not skip a sigma)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        hits = np.nonzero(schedule == scalar_of(timestep))[0]
        if len(hits) == 0:
            raise ValueError(f"{self.name}: timestep {timestep!r} is not in the schedule")
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def scale_model_input(self, sample: np.ndarray, timestep) -> np.ndarray:
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return as_float32(sample) / np.sqrt(sigma * sigma + F32(1.0))

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep) -> np.ndarray:
        if self._begin_index is None:
            index = self.index_for_timestep(timestep)
        elif self._step_index is not None:
            index = self._step_index
        else:
            index = self._begin_index
        return as_float32(original) + as_float32(noise) * self.sigmas[index]

    def _pred_original(self, model_output: np.ndarray, sample: np.ndarray, sigma) -> np.ndarray:
        pt = self.config["prediction_type"]
        if pt == "epsilon":
            return sample - sigma * model_output
        if pt == "v_prediction":
            return model_output * (-sigma / np.sqrt(sigma * sigma + F32(1.0))) + sample / (sigma * sigma + F32(1.0))
        return model_output  # "sample" / "original_sample"

    def _begin_step(self, timestep) -> None:
        self._require_timesteps()
        if isinstance(timestep, (int, np.integer)):
            raise ValueError(f"{self.name}: pass one of scheduler.timesteps to step(), not an integer index")
        if self._step_index is None:
            self._init_step_index(timestep)


class EulerDiscreteScheduler(SigmaScheduler):
    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"
    order = 1
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }

    def _check_config(self) -> None:
        cfg = self.config
        check_prediction_type(self, ("epsilon", "v_prediction", "sample", "original_sample"))
        check_spacing(cfg["timestep_spacing"])
        if cfg["use_beta_sigmas"]:
            raise SchedulerConfigError("euler: use_beta_sigmas is not supported")
        if bool(cfg["use_karras_sigmas"]) and bool(cfg["use_exponential_sigmas"]):
            raise SchedulerConfigError("euler: use only one of use_karras_sigmas and use_exponential_sigmas")
        if cfg["interpolation_type"] not in ("linear", "log_linear"):
            raise SchedulerConfigError(
                f"euler: interpolation_type {cfg['interpolation_type']!r} is not supported; use linear or log_linear"
            )
        if cfg["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise SchedulerConfigError(
                f"euler: final_sigmas_type {cfg['final_sigmas_type']!r} is not supported; use zero or sigma_min"
            )
        if cfg["timestep_type"] not in ("discrete", "continuous"):
            raise SchedulerConfigError(
                f"euler: timestep_type {cfg['timestep_type']!r} is not supported; use discrete or continuous"
            )

    def _setup(self) -> None:
        super()._setup()
        if self._continuous_timesteps:
            self.timesteps = (F32(0.25) * np.log(self.sigmas[:-1])).astype(F32)

    @property
    def _continuous_timesteps(self) -> bool:
        return self.config["timestep_type"] == "continuous" and self.config["prediction_type"] == "v_prediction"

    def _sigma_range(self, sigmas: np.ndarray) -> tuple[float, float]:
        lo, hi = self.config["sigma_min"], self.config["sigma_max"]
        return (float(sigmas[-1]) if lo is None else lo), (float(sigmas[0]) if hi is None else hi)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        self.num_inference_steps = n
        cfg = self.config
        timesteps = float_timesteps(cfg, n)

        train_sigmas = self._train_sigmas()  # ascending in t, float32
        log_sigmas = np.log(train_sigmas)
        if cfg["interpolation_type"] == "linear":
            sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        else:  # log_linear: geometric from the largest to the smallest training sigma, n + 1 values
            start, end = np.log(train_sigmas[-1]), np.log(train_sigmas[0])
            sigmas = np.exp(torch_linspace_f32(float(start), float(end), n + 1))

        if cfg["use_karras_sigmas"]:
            sigma_min, sigma_max = self._sigma_range(sigmas)
            sigmas = karras_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
        elif cfg["use_exponential_sigmas"]:
            sigma_min, sigma_max = self._sigma_range(sigmas)
            sigmas = exponential_sigmas(sigma_min, sigma_max, n)
            timesteps = sigma_to_t(sigmas, log_sigmas)

        if cfg["final_sigmas_type"] == "sigma_min":
            ac0 = self.alphas_cumprod[0]
            sigma_last = float(np.sqrt((F32(1.0) - ac0) / ac0))
        else:
            sigma_last = 0.0
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(F32)

        if self._continuous_timesteps:
            self.timesteps = (F32(0.25) * np.log(self.sigmas[:-1])).astype(F32)
        else:
            self.timesteps = np.asarray(timesteps).astype(F32)
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        self._begin_step(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        i = self._step_index
        sigma = self.sigmas[i]  # no churn: sigma_hat == sigma
        pred_x0 = self._pred_original(model_output, sample, sigma)
        derivative = (sample - pred_x0) / sigma
        dt = self.sigmas[i + 1] - sigma
        self._step_index = i + 1
        return sample + derivative * dt
