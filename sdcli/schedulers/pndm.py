"""PNDM (pseudo numerical methods for diffusion models, arXiv 2202.09778): Runge-Kutta warm-up steps
(unless ``skip_prk_steps``) followed by linear multistep (PLMS) steps; mirrors diffusers' PNDMScheduler."""

from __future__ import annotations

import numpy as np

from .base import (
    F32,
    Scheduler,
    as_float32,
    check_prediction_type,
    check_spacing,
    leading_timesteps,
    linspace_timesteps,
    scalar_of,
    trailing_timesteps,
)


class PNDMScheduler(Scheduler):
    name = "pndm"
    diffusers_class = "PNDMScheduler"
    order = 1
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }

    pndm_order = 4

    def _check_config(self) -> None:
        check_prediction_type(self, ("epsilon", "v_prediction"))
        check_spacing(self.config["timestep_spacing"])

    def _setup(self) -> None:
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        n_train = len(self)
        self.timesteps = np.arange(0, n_train)[::-1].astype(np.int64)
        self.prk_timesteps = np.zeros(0, dtype=np.int64)
        self.plms_timesteps = np.zeros(0, dtype=np.int64)
        self._reset_state()

    def _reset_state(self) -> None:
        self.counter = 0
        self.ets: list[np.ndarray] = []
        self.cur_model_output = None  # running Runge-Kutta sum
        self.cur_sample = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        n_train = len(self)
        self.num_inference_steps = n
        spacing = self.config["timestep_spacing"]
        if spacing == "linspace":
            base = linspace_timesteps(n_train, n)
        elif spacing == "leading":
            base = leading_timesteps(n_train, n, self.config["steps_offset"])
        else:
            base = trailing_timesteps(n_train, n)[::-1].copy()
        self._base_timesteps = base  # ascending

        if self.config["skip_prk_steps"]:
            # one extra, repeated timestep: the second PLMS step re-evaluates the model at the same t
            self.prk_timesteps = np.zeros(0, dtype=np.int64)
            self.plms_timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].astype(np.int64)
        else:
            half_step = n_train // n // 2
            last = np.asarray(base[-self.pndm_order :]).repeat(2) + np.tile(np.array([0, half_step]), self.pndm_order)
            self.prk_timesteps = last[:-1].repeat(2)[1:-1][::-1].astype(np.int64)
            self.plms_timesteps = base[:-3][::-1].astype(np.int64)

        self.timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self._reset_state()

    # stepping -------------------------------------------------------------------------------------
    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        self._require_timesteps()
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        t = int(scalar_of(timestep))
        if self.counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]:
            return self._step_prk(model_output, t, sample)
        return self._step_plms(model_output, t, sample)

    def _step_prk(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        half_step = len(self) // self.num_inference_steps // 2
        prev_t = t - (0 if self.counter % 2 else half_step)
        t = int(self.prk_timesteps[self.counter // 4 * 4])

        phase = self.counter % 4
        if phase == 0:
            self.cur_model_output = (1 / 6) * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif phase in (1, 2):
            self.cur_model_output = self.cur_model_output + (1 / 3) * model_output
        else:
            model_output = self.cur_model_output + (1 / 6) * model_output
            self.cur_model_output = None

        base_sample = self.cur_sample if self.cur_sample is not None else sample
        prev = self._prev_sample(base_sample, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _step_plms(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        if not self.config["skip_prk_steps"] and len(self.ets) < 3:
            raise RuntimeError("pndm: PLMS steps need the Runge-Kutta warm-up (12 model calls) to have run first")

        stride = len(self) // self.num_inference_steps
        prev_t = t - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_t = t
            t = t + stride

        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])

        prev = self._prev_sample(sample, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _prev_sample(self, sample: np.ndarray, t: int, prev_t: int, model_output: np.ndarray) -> np.ndarray:
        """x_{t-delta} from x_t and the (combined) noise estimate, formula (9) of the PNDM paper."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = F32(1.0) - a_t
        b_prev = F32(1.0) - a_prev

        if self.config["prediction_type"] == "v_prediction":
            model_output = np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample

        sample_coeff = np.sqrt(a_prev / a_t)
        denom = a_t * np.sqrt(b_prev) + np.sqrt(a_t * b_t * a_prev)
        return sample_coeff * sample - (a_prev - a_t) * model_output / denom
