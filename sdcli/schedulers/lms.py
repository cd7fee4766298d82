"""Linear multistep (LMS) sampler in sigma space: each step integrates the Lagrange polynomial through
the last (up to four) ODE derivatives; mirrors diffusers' LMSDiscreteScheduler (whose ``step`` uses
order 4). The coefficients are the exact integrals of the Lagrange basis polynomials (diffusers gets
the same numbers, to its quadrature's accuracy, from scipy.integrate.quad)."""

from __future__ import annotations

import numpy as np
from numpy.polynomial import Polynomial

from .base import F32, SchedulerConfigError, as_float32, check_prediction_type, check_spacing
from .euler import SigmaScheduler, float_timesteps
from .sigma_utils import sigma_schedule, train_sigmas


def lms_coefficient(sigmas: np.ndarray, order: int, t: int, current_order: int) -> float:
    """Integral over [sigmas[t], sigmas[t + 1]] of the Lagrange basis polynomial that is 1 at
    ``sigmas[t - current_order]`` and 0 at the other nodes ``sigmas[t - k]``, ``k < order``.

    The polynomial is built in the shifted variable ``u = tau - sigmas[t]`` (better conditioned), in
    float64, and integrated exactly."""
    origin = float(sigmas[t])
    nodes = [float(sigmas[t - k]) - origin for k in range(order)]
    basis = Polynomial([1.0])
    for k in range(order):
        if k == current_order:
            continue
        basis = basis * Polynomial([-nodes[k], 1.0]) / (nodes[current_order] - nodes[k])
    antiderivative = basis.integ()  # zero at u = 0
    return float(antiderivative(float(sigmas[t + 1]) - origin))


class LMSDiscreteScheduler(SigmaScheduler):
    name = "lms"
    diffusers_class = "LMSDiscreteScheduler"
    order = 1
    lms_order = 4  # the order diffusers' step() uses by default (and every pipeline with it)
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }

    def _check_config(self) -> None:
        cfg = self.config
        check_prediction_type(self, ("epsilon", "v_prediction", "sample"))
        check_spacing(cfg["timestep_spacing"])
        if cfg["use_beta_sigmas"]:
            raise SchedulerConfigError("lms: use_beta_sigmas is not supported")
        if bool(cfg["use_karras_sigmas"]) and bool(cfg["use_exponential_sigmas"]):
            raise SchedulerConfigError("lms: use only one of use_karras_sigmas and use_exponential_sigmas")

    def _setup(self) -> None:
        self.sigmas = np.concatenate([train_sigmas(self.alphas_cumprod)[::-1], np.zeros(1, dtype=F32)]).astype(F32)
        self.timesteps = np.linspace(0, len(self) - 1, len(self), dtype=np.float32)[::-1].copy()
        self._step_index = None
        self._begin_index = None
        self.derivatives: list[np.ndarray] = []

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = int(num_inference_steps)
        self.num_inference_steps = n
        cfg = self.config
        timesteps = float_timesteps(cfg, n)
        sigmas, timesteps, _ = sigma_schedule(cfg, timesteps, self.alphas_cumprod)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
        self.timesteps = np.asarray(timesteps).astype(F32)
        self._step_index = None
        self._begin_index = None
        self.derivatives = []

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        self._begin_step(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        i = self._step_index
        sigma = self.sigmas[i]
        pred_x0 = self._pred_original(model_output, sample, sigma)
        self.derivatives.append((sample - pred_x0) / sigma)
        if len(self.derivatives) > self.lms_order:
            self.derivatives.pop(0)
        # as diffusers: the order follows the step index, so after set_begin_index the first steps use
        # high-order coefficients with fewer stored derivatives (zip stops at the shorter list)
        order = min(i + 1, self.lms_order)
        coeffs = [lms_coefficient(self.sigmas, order, i, j) for j in range(order)]
        update = None
        for coeff, derivative in zip(coeffs, reversed(self.derivatives)):
            term = F32(coeff) * derivative
            update = term if update is None else update + term
        self._step_index = i + 1
        return sample + update
