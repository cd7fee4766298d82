"""DPM-Solver / DPM-Solver++ multistep (arXiv 2206.00927, 2211.01095), orders 1 to 3, ODE and SDE
variants; mirrors diffusers' DPMSolverMultistepScheduler. ``dpmpp_2m`` is its default (DPM-Solver++,
second order, midpoint); ``dpmpp_2m_karras`` is the same with Karras sigmas whatever the config says."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import F32, SchedulerConfigError, as_float32, check_prediction_type, check_spacing
from .sigma_utils import (
    AlphaSigmaScheduler,
    exp32,
    exponential_sigmas,
    karras_sigmas,
    log32,
    sigma_to_t,
    train_sigmas,
)

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")


class DPMSolverMultistepScheduler(AlphaSigmaScheduler):
    name = "dpmpp_2m"
    diffusers_class = "DPMSolverMultistepScheduler"
    order = 1
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }

    def _check_config(self) -> None:
        cfg = self.config
        check_prediction_type(self, ("epsilon", "v_prediction", "sample"))
        check_spacing(cfg["timestep_spacing"])
        # diffusers' own substitutions
        if cfg["algorithm_type"] == "deis":
            cfg["algorithm_type"] = "dpmsolver++"
        if cfg["solver_type"] in ("logrho", "bh1", "bh2"):
            cfg["solver_type"] = "midpoint"
        if cfg["algorithm_type"] not in ALGORITHMS:
            raise SchedulerConfigError(f"{self.name}: algorithm_type {cfg['algorithm_type']!r} is not supported")
        if cfg["solver_type"] not in ("midpoint", "heun"):
            raise SchedulerConfigError(f"{self.name}: solver_type {cfg['solver_type']!r} is not supported")
        if int(cfg["solver_order"]) not in (1, 2, 3):
            raise SchedulerConfigError(f"{self.name}: solver_order must be 1, 2 or 3")
        if cfg["algorithm_type"] == "sde-dpmsolver" and int(cfg["solver_order"]) == 3:
            raise SchedulerConfigError(f"{self.name}: sde-dpmsolver has no third-order update")
        if cfg["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise SchedulerConfigError(f"{self.name}: final_sigmas_type {cfg['final_sigmas_type']!r} is not supported")
        if cfg["algorithm_type"] in ("dpmsolver", "sde-dpmsolver") and cfg["final_sigmas_type"] == "zero":
            raise SchedulerConfigError(f"{self.name}: algorithm_type {cfg['algorithm_type']} needs final_sigmas_type='sigma_min'")
        if sum(bool(cfg[k]) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")) > 1:
            raise SchedulerConfigError(f"{self.name}: use only one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas")
        for key in ("thresholding", "use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting"):
            if cfg[key]:
                raise SchedulerConfigError(f"{self.name}: {key}=True is not supported")
        if cfg["variance_type"] is not None:
            raise SchedulerConfigError(f"{self.name}: variance_type {cfg['variance_type']!r} is not supported")

    def _reset_state(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * int(self.config["solver_order"])
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        n = int(num_inference_steps)
        n_train = len(self)
        ac = self.alphas_cumprod
        lambdas = log32_vec(np.sqrt(ac)) - log32_vec(np.sqrt(F32(1.0) - ac))
        clipped_idx = int(np.searchsorted(lambdas[::-1], F32(cfg["lambda_min_clipped"]), side="left"))
        last_timestep = n_train - clipped_idx
        timesteps = self._spaced_timesteps(n, last_timestep)

        sigmas = train_sigmas(ac)
        log_sigmas = np.log(sigmas)
        round_ts = cfg["beta_schedule"] != "squaredcos_cap_v2"
        if cfg["use_karras_sigmas"]:
            sigmas = karras_sigmas(sigmas[0], sigmas[-1], n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
            timesteps = timesteps.round() if round_ts else timesteps
        elif cfg["use_lu_lambdas"]:
            # diffusers interpolates log-sigma linearly between its extremes ("lambdas" in its code)
            lo, hi = float(log_sigmas[0]), float(log_sigmas[-1])
            sigmas = np.exp(hi + np.linspace(0, 1, n) * (lo - hi))
            timesteps = sigma_to_t(sigmas, log_sigmas)
            timesteps = timesteps.round() if round_ts else timesteps
        elif cfg["use_exponential_sigmas"]:
            sigmas = exponential_sigmas(sigmas[0], sigmas[-1], n)
            timesteps = sigma_to_t(sigmas, log_sigmas)
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)

        last = self._first_train_sigma() if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(F32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._reset_state()
        self._step_index = None
        self._begin_index = None

    # model output -> x0 (dpmsolver++) or epsilon (dpmsolver) ----------------------------------------
    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        pt = self.config["prediction_type"]
        if pt == "sample" and self.config["algorithm_type"].endswith("++"):
            return model_output
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[self._step_index])
        if self.config["algorithm_type"].endswith("++"):
            if pt == "epsilon":
                return (sample - sigma_t * model_output) / alpha_t
            return alpha_t * sample - sigma_t * model_output  # v_prediction
        if pt == "epsilon":
            return model_output
        if pt == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        return alpha_t * model_output + sigma_t * sample  # v_prediction

    # updates ------------------------------------------------------------------------------------------
    def _alphas_sigmas_lambdas(self, offsets: tuple[int, ...]):
        out = []
        for off in offsets:
            alpha, sigma = self.alpha_sigma(self.sigmas[self._step_index + off])
            out.append((alpha, sigma, log32(alpha) - log32(sigma)))
        return out

    def _first_order(self, m0: np.ndarray, sample: np.ndarray, noise) -> np.ndarray:
        (alpha_t, sigma_t, lambda_t), (alpha_s, sigma_s, lambda_s) = self._alphas_sigmas_lambdas((1, 0))
        h = lambda_t - lambda_s
        algo = self.config["algorithm_type"]
        one = F32(1.0)
        if algo == "dpmsolver++":
            return (sigma_t / sigma_s) * sample - (alpha_t * (exp32(-h) - one)) * m0
        if algo == "dpmsolver":
            return (alpha_t / alpha_s) * sample - (sigma_t * (exp32(h) - one)) * m0
        if algo == "sde-dpmsolver++":
            e2 = exp32(F32(-2.0) * h)
            return (
                (sigma_t / sigma_s * exp32(-h)) * sample
                + (alpha_t * (one - e2)) * m0
                + sigma_t * np.sqrt(one - e2) * noise
            )
        e2 = exp32(F32(2.0) * h)  # sde-dpmsolver
        return (
            (alpha_t / alpha_s) * sample
            - F32(2.0) * (sigma_t * (exp32(h) - one)) * m0
            + sigma_t * np.sqrt(e2 - one) * noise
        )

    def _second_order(self, sample: np.ndarray, noise) -> np.ndarray:
        (alpha_t, sigma_t, lambda_t), (alpha_s0, sigma_s0, lambda_s0), (_, _, lambda_s1) = (
            self._alphas_sigmas_lambdas((1, 0, -1))
        )
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (F32(1.0) / r0) * (m0 - m1)
        algo, midpoint = self.config["algorithm_type"], self.config["solver_type"] == "midpoint"
        one, half, two = F32(1.0), F32(0.5), F32(2.0)
        if algo == "dpmsolver++":
            em = exp32(-h) - one
            x = (sigma_t / sigma_s0) * sample - (alpha_t * em) * d0
            if midpoint:
                return x - half * (alpha_t * em) * d1
            return x + (alpha_t * (em / h + one)) * d1
        if algo == "dpmsolver":
            ep = exp32(h) - one
            x = (alpha_t / alpha_s0) * sample - (sigma_t * ep) * d0
            if midpoint:
                return x - half * (sigma_t * ep) * d1
            return x - (sigma_t * (ep / h - one)) * d1
        if algo == "sde-dpmsolver++":
            e2 = exp32(-two * h)
            x = (sigma_t / sigma_s0 * exp32(-h)) * sample + (alpha_t * (one - e2)) * d0
            if midpoint:
                x = x + half * (alpha_t * (one - e2)) * d1
            else:
                x = x + (alpha_t * ((one - e2) / (-two * h) + one)) * d1
            return x + sigma_t * np.sqrt(one - e2) * noise
        # sde-dpmsolver
        ep = exp32(h) - one
        x = (alpha_t / alpha_s0) * sample - two * (sigma_t * ep) * d0
        if midpoint:
            x = x - (sigma_t * ep) * d1
        else:
            x = x - two * (sigma_t * (ep / h - one)) * d1
        return x + sigma_t * np.sqrt(exp32(two * h) - one) * noise

    def _third_order(self, sample: np.ndarray, noise) -> np.ndarray:
        (alpha_t, sigma_t, lambda_t), (alpha_s0, sigma_s0, lambda_s0), (_, _, lambda_s1), (_, _, lambda_s2) = (
            self._alphas_sigmas_lambdas((1, 0, -1, -2))
        )
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        one, half, two = F32(1.0), F32(0.5), F32(2.0)
        d0 = m0
        d1_0, d1_1 = (one / r0) * (m0 - m1), (one / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (one / (r0 + r1)) * (d1_0 - d1_1)
        algo = self.config["algorithm_type"]
        if algo == "dpmsolver++":
            em = exp32(-h) - one
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * em) * d0
                + (alpha_t * (em / h + one)) * d1
                - (alpha_t * ((exp32(-h) - one + h) / (h * h) - half)) * d2
            )
        if algo == "dpmsolver":
            ep = exp32(h) - one
            return (
                (alpha_t / alpha_s0) * sample
                - (sigma_t * ep) * d0
                - (sigma_t * (ep / h - one)) * d1
                - (sigma_t * ((exp32(h) - one - h) / (h * h) - half)) * d2
            )
        # sde-dpmsolver++
        e2 = exp32(-two * h)
        th = two * h
        return (
            (sigma_t / sigma_s0 * exp32(-h)) * sample
            + (alpha_t * (one - e2)) * d0
            + (alpha_t * ((one - e2) / (-two * h) + one)) * d1
            + (alpha_t * ((one - e2 - two * h) / (th * th) - half)) * d2
            + sigma_t * np.sqrt(one - e2) * noise
        )

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        cfg = self.config
        sde = cfg["algorithm_type"].startswith("sde-")
        if sde and rng is None:
            raise ValueError(f"{self.name}: step() needs an rng (anything with .randn(shape)) for the SDE noise")
        i = self._begin_step(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        n = len(self.timesteps)
        order = int(cfg["solver_order"])
        lower_order_final = i == n - 1 and (
            cfg["euler_at_final"] or (cfg["lower_order_final"] and n < 15) or cfg["final_sigmas_type"] == "zero"
        )
        lower_order_second = i == n - 2 and cfg["lower_order_final"] and n < 15

        converted = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [converted]
        noise = as_float32(rng.randn(model_output.shape)) if sde else None

        # (a zero step, h = 0, divides by zero as in diffusers: e.g. Karras sigmas ending at sigma_min)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if order == 1 or self.lower_order_nums < 1 or lower_order_final:
                prev = self._first_order(converted, sample, noise)
            elif order == 2 or self.lower_order_nums < 2 or lower_order_second:
                prev = self._second_order(sample, noise)
            else:
                prev = self._third_order(sample, noise)
        if self.lower_order_nums < order:
            self.lower_order_nums += 1
        self._step_index = i + 1
        return prev.astype(F32, copy=False)


def log32_vec(x: np.ndarray) -> np.ndarray:
    """Elementwise float32 log via float64 (the lambda_min_clipped search only)."""
    with np.errstate(divide="ignore"):
        return np.log(as_float32(x).astype(np.float64)).astype(F32)


class DPMSolverMultistepKarrasScheduler(DPMSolverMultistepScheduler):
    """DPM++ 2M Karras: DPMSolverMultistepScheduler with ``use_karras_sigmas=True`` forced."""

    name = "dpmpp_2m_karras"

    def __init__(self, **config: Any):
        config = {**config, "use_karras_sigmas": True, "use_exponential_sigmas": False, "use_beta_sigmas": False}
        super().__init__(**config)
