"""UniPC (unified predictor-corrector, arXiv 2302.04867): a multistep predictor (UniP) whose result is
refined by a corrector (UniC) once the next model output is known; mirrors diffusers'
UniPCMultistepScheduler (B(h) variants bh1 / bh2, data or noise prediction)."""

from __future__ import annotations

import numpy as np

from .base import F32, SchedulerConfigError, as_float32, check_prediction_type, check_spacing
from .sigma_utils import (
    AlphaSigmaScheduler,
    expm1_32,
    exponential_sigmas,
    karras_sigmas,
    sigma_to_t,
    solve_f32,
    train_sigmas,
)


class UniPCMultistepScheduler(AlphaSigmaScheduler):
    name = "unipc"
    diffusers_class = "UniPCMultistepScheduler"
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
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    }

    def _check_config(self) -> None:
        cfg = self.config
        check_prediction_type(self, ("epsilon", "v_prediction", "sample"))
        check_spacing(cfg["timestep_spacing"])
        if cfg["solver_type"] in ("midpoint", "heun", "logrho"):
            cfg["solver_type"] = "bh2"  # diffusers' substitution
        if cfg["solver_type"] not in ("bh1", "bh2"):
            raise SchedulerConfigError(f"unipc: solver_type {cfg['solver_type']!r} is not supported")
        if int(cfg["solver_order"]) < 1:
            raise SchedulerConfigError("unipc: solver_order must be at least 1")
        if cfg["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise SchedulerConfigError(f"unipc: final_sigmas_type {cfg['final_sigmas_type']!r} is not supported")
        if sum(bool(cfg[k]) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")) > 1:
            raise SchedulerConfigError("unipc: use only one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas")
        for key in ("thresholding", "use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting"):
            if cfg[key]:
                raise SchedulerConfigError(f"unipc: {key}=True is not supported")
        if cfg["solver_p"] is not None:
            raise SchedulerConfigError("unipc: solver_p (an external predictor scheduler) is not supported")
        if cfg["shift_terminal"] is not None:
            raise SchedulerConfigError("unipc: shift_terminal is only for flow sigmas, which are not supported")
        cfg["disable_corrector"] = list(cfg["disable_corrector"] or [])

    def _reset_state(self) -> None:
        order = int(self.config["solver_order"])
        self.model_outputs: list[np.ndarray | None] = [None] * order
        self.lower_order_nums = 0
        self.last_sample: np.ndarray | None = None
        self.this_order = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        n = int(num_inference_steps)
        timesteps = self._spaced_timesteps(n, len(self))
        sigmas = train_sigmas(self.alphas_cumprod)
        if cfg["use_karras_sigmas"] or cfg["use_exponential_sigmas"]:
            log_sigmas = np.log(sigmas)
            lo = cfg["sigma_min"] if cfg["sigma_min"] is not None else float(sigmas[0])
            hi = cfg["sigma_max"] if cfg["sigma_max"] is not None else float(sigmas[-1])
            if cfg["use_karras_sigmas"]:
                sigmas = karras_sigmas(lo, hi, n)
                timesteps = sigma_to_t(sigmas, log_sigmas).round()
            else:
                sigmas = exponential_sigmas(lo, hi, n)
                timesteps = sigma_to_t(sigmas, log_sigmas)
            last = sigmas[-1] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
            last = self._first_train_sigma() if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(F32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._reset_state()
        self._step_index = None
        self._begin_index = None

    @property
    def predict_x0(self) -> bool:
        return bool(self.config["predict_x0"])

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        pt = self.config["prediction_type"]
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[self._step_index])
        if self.predict_x0:
            if pt == "epsilon":
                return (sample - sigma_t * model_output) / alpha_t
            if pt == "sample":
                return model_output
            return alpha_t * sample - sigma_t * model_output  # v_prediction
        if pt == "epsilon":
            return model_output
        if pt == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        return alpha_t * model_output + sigma_t * sample  # v_prediction

    def _coefficients(self, t_index: int, s_index: int, order: int, history_start: int):
        """Common part of predictor and corrector: alpha/sigma at the target (t) and source (s0) indices,
        h, the ratios r_k with the divided differences D1_k, and the right-hand side b / matrix R."""
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[t_index])
        alpha_s0, sigma_s0 = self.alpha_sigma(self.sigmas[s_index])
        lambda_t = self.lambda_of(self.sigmas[t_index])
        lambda_s0 = self.lambda_of(self.sigmas[s_index])
        h = lambda_t - lambda_s0
        m0 = self.model_outputs[-1]
        rks, d1s = [], []
        for k in range(1, order):
            mk = self.model_outputs[-(k + 1)]
            rk = (self.lambda_of(self.sigmas[history_start - k]) - lambda_s0) / h
            rks.append(rk)
            d1s.append((mk - m0) / rk)
        rks.append(F32(1.0))
        rks = np.array(rks, dtype=F32)

        hh = -h if self.predict_x0 else h
        h_phi_1 = expm1_32(hh)
        h_phi_k = h_phi_1 / hh - F32(1.0)
        b_h = hh if self.config["solver_type"] == "bh1" else expm1_32(hh)
        rows, b = [], []
        factorial = 1
        for k in range(1, order + 1):
            rows.append(rks ** (k - 1) if k > 1 else np.ones_like(rks))
            b.append(h_phi_k * F32(factorial) / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - F32(1.0 / factorial)
        return {
            "alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_s0": alpha_s0, "sigma_s0": sigma_s0,
            "h_phi_1": h_phi_1, "b_h": b_h, "R": np.stack(rows).astype(F32), "b": np.array(b, dtype=F32),
            "d1s": d1s, "m0": m0,
        }

    def _base_update(self, c: dict, x: np.ndarray) -> tuple[np.ndarray, np.float32]:
        """The exponential-integrator step without the higher-order terms, and the scale of those terms."""
        if self.predict_x0:
            x_t_ = c["sigma_t"] / c["sigma_s0"] * x - c["alpha_t"] * c["h_phi_1"] * c["m0"]
            return x_t_, c["alpha_t"] * c["b_h"]
        x_t_ = c["alpha_t"] / c["alpha_s0"] * x - c["sigma_t"] * c["h_phi_1"] * c["m0"]
        return x_t_, c["sigma_t"] * c["b_h"]

    @staticmethod
    def _weighted(rhos: np.ndarray, d1s: list[np.ndarray]) -> np.ndarray:
        acc = rhos[0] * d1s[0]
        for rho, d in zip(rhos[1:], d1s[1:]):
            acc = acc + rho * d
        return acc

    def _predict(self, sample: np.ndarray, order: int) -> np.ndarray:
        i = self._step_index
        c = self._coefficients(i + 1, i, order, history_start=i)
        x_t_, scale = self._base_update(c, sample)
        if not c["d1s"]:
            return x_t_
        if order == 2:
            rhos_p = np.array([0.5], dtype=F32)
        else:
            rhos_p = solve_f32(c["R"][:-1, :-1], c["b"][:-1])
        return x_t_ - scale * self._weighted(rhos_p, c["d1s"])

    def _correct(self, model_t: np.ndarray, last_sample: np.ndarray, order: int) -> np.ndarray:
        i = self._step_index
        c = self._coefficients(i, i - 1, order, history_start=i - 1)
        x_t_, scale = self._base_update(c, last_sample)
        rhos_c = np.array([0.5], dtype=F32) if order == 1 else solve_f32(c["R"], c["b"])
        d1_t = model_t - c["m0"]
        last_term = rhos_c[-1] * d1_t
        if c["d1s"]:
            last_term = self._weighted(rhos_c[:-1], c["d1s"]) + last_term
        return x_t_ - scale * last_term

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        cfg = self.config
        i = self._begin_step(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        use_corrector = i > 0 and (i - 1) not in cfg["disable_corrector"] and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if use_corrector:
                sample = self._correct(converted, self.last_sample, self.this_order)
            self.model_outputs = self.model_outputs[1:] + [converted]

            order = int(cfg["solver_order"])
            this_order = min(order, len(self.timesteps) - i) if cfg["lower_order_final"] else order
            self.this_order = min(this_order, self.lower_order_nums + 1)
            self.last_sample = sample
            prev = self._predict(sample, self.this_order)
        if self.lower_order_nums < order:
            self.lower_order_nums += 1
        self._step_index = i + 1
        return prev.astype(F32, copy=False)
