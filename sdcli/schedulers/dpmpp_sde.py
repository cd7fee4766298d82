"""DPM++ SDE (stochastic, second order, midpoint in log-sigma); mirrors diffusers' DPMSolverSDEScheduler.
Each step is two model calls: one at sigma, one at the log-sigma midpoint towards sigma_next. The noise
comes from a Brownian tree (see brownian.py), so it depends on the sigmas queried, not on call order.
``dpmpp_sde_karras`` is the same with Karras sigmas whatever the config says.

The tree's seed is the config's ``noise_sampler_seed`` when set, else the rng's seed (diffusers draws
one from torch's global generator instead). With ``--rng numpy`` the tree draws numpy normals too."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import F32, SchedulerConfigError, as_float32, check_prediction_type, check_spacing
from .brownian import BrownianTreeNoiseSampler, numpy_randn, torch_randn
from .euler import SigmaScheduler
from .sigma_utils import exp32, expm1_32, log32, sigma_schedule, sigma_to_t, train_sigmas


def _timesteps_f64(config: dict, n: int) -> np.ndarray:
    """Descending float64 timesteps for the configured spacing (float64 in this diffusers class)."""
    n_train = int(config["num_train_timesteps"])
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, n, dtype=float)[::-1].copy()
    if spacing == "leading":
        ratio = n_train // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(float) + config["steps_offset"]
    ratio = n_train / n
    return np.arange(n_train, 0, -ratio).round().astype(float) - 1


def _midpoint_sigmas(sigmas: np.ndarray) -> np.ndarray:
    """Sigmas halfway (in log sigma) between consecutive sigmas, float64."""
    t = -np.log(sigmas)
    return np.exp(-(t[:-1] + np.diff(t) * 0.5))


class DPMSolverSDEScheduler(SigmaScheduler):
    name = "dpmpp_sde"
    diffusers_class = "DPMSolverSDEScheduler"
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
        "noise_sampler_seed": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }

    def _check_config(self) -> None:
        cfg = self.config
        check_prediction_type(self, ("epsilon", "v_prediction"))
        check_spacing(cfg["timestep_spacing"])
        if cfg["use_beta_sigmas"]:
            raise SchedulerConfigError(f"{self.name}: use_beta_sigmas is not supported")
        if bool(cfg["use_karras_sigmas"]) and bool(cfg["use_exponential_sigmas"]):
            raise SchedulerConfigError(f"{self.name}: use only one of use_karras_sigmas and use_exponential_sigmas")

    def _setup(self) -> None:
        # (diffusers runs set_timesteps(num_train_timesteps) here; nothing reads the result before the
        # caller's own set_timesteps, so the training sigmas stand in)
        self.sigmas = np.concatenate([train_sigmas(self.alphas_cumprod)[::-1], np.zeros(1, dtype=F32)]).astype(F32)
        self.timesteps = np.linspace(0, len(self) - 1, len(self))[::-1].copy()
        self._step_index = None
        self._begin_index = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.sample: np.ndarray | None = None  # the step's start, kept between its two halves
        self.mid_point_sigma = None
        self.noise_sampler: BrownianTreeNoiseSampler | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        self.num_inference_steps = n
        cfg = self.config
        timesteps = _timesteps_f64(cfg, n)
        sigmas, timesteps, log_sigmas = sigma_schedule(cfg, timesteps, self.alphas_cumprod)
        midpoint_timesteps = sigma_to_t(_midpoint_sigmas(sigmas), log_sigmas)

        sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]]).astype(F32)
        timesteps = np.asarray(timesteps, dtype=np.float64)
        timesteps = np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
        timesteps[1::2] = midpoint_timesteps
        self.timesteps = timesteps
        self._reset_state()
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: np.ndarray, timestep) -> np.ndarray:
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index] if self.state_in_first_order else self.mid_point_sigma
        return as_float32(sample) / np.sqrt(sigma * sigma + F32(1.0))

    def _tree_seed(self, rng) -> int:
        seed = self.config["noise_sampler_seed"]
        if seed is None:
            if rng is None or getattr(rng, "seed", None) is None:
                raise ValueError(
                    f"{self.name}: step() needs an rng with a seed (or noise_sampler_seed in the config) for the noise"
                )
            seed = rng.seed
        return int(seed)

    def _make_noise_sampler(self, shape, rng) -> BrownianTreeNoiseSampler:
        positive = self.sigmas[self.sigmas > 0]
        randn = numpy_randn if getattr(rng, "kind", "torch") == "numpy" else torch_randn
        return BrownianTreeNoiseSampler(shape, positive.min(), self.sigmas.max(), self._tree_seed(rng), randn)

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        self._begin_step(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        if self.noise_sampler is None:
            self.noise_sampler = self._make_noise_sampler(sample.shape, rng)
        i = self._step_index
        first = self.state_in_first_order
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])

        # everything below in float32 scalars, as torch computes it on 0-d tensors
        t = -log32(sigma)
        t_next = -log32(sigma_next)  # inf at the final sigma 0 (only the Euler branch uses it then)
        t_mid = t + (t_next - t) * F32(0.5)
        pred_x0 = self._pred_original(model_output, sample, sigma if first else exp32(-t_mid))

        if sigma_next == 0:
            derivative = (sample - pred_x0) / sigma
            self._step_index = i + 1
            return sample + derivative * (sigma_next - sigma)

        if first:
            t_next = t_mid
        else:
            sample = self.sample
        sigma_from, sigma_to = exp32(-t), exp32(-t_next)
        to_sq, from_sq = sigma_to * sigma_to, sigma_from * sigma_from
        sigma_up = min(sigma_to, np.sqrt(to_sq * (from_sq - to_sq) / from_sq))
        sigma_down = np.sqrt(to_sq - sigma_up * sigma_up)
        t_ancestral = -log32(sigma_down)
        prev = (exp32(-t_ancestral) / exp32(-t)) * sample - expm1_32(t - t_ancestral) * pred_x0
        noise = self.noise_sampler(exp32(-t), exp32(-t_next))
        prev = prev + noise * sigma_up

        if first:
            self.sample, self.mid_point_sigma = sample, exp32(-t_next)
        else:
            self.sample, self.mid_point_sigma = None, None
        self._step_index = i + 1
        return prev


class DPMSolverSDEKarrasScheduler(DPMSolverSDEScheduler):
    """DPM++ SDE Karras: DPMSolverSDEScheduler with ``use_karras_sigmas=True`` forced."""

    name = "dpmpp_sde_karras"

    def __init__(self, **config: Any):
        config = {**config, "use_karras_sigmas": True, "use_exponential_sigmas": False, "use_beta_sigmas": False}
        super().__init__(**config)
