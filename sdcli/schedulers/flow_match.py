"""Flow-matching Euler sampler (rectified flow: ``x_t = (1 - sigma) * x_0 + sigma * noise``, the model
predicts the velocity); mirrors diffusers 0.42.1's FlowMatchEulerDiscreteScheduler, with the pipelines'
helpers that feed it (FLUX.1's ``calculate_shift``, FLUX.2's ``compute_empirical_mu``, the default
sigmas of FLUX / Z-Image and Z-Image img2img's strength handling).

Where diffusers computes in numpy (the schedule before it becomes a tensor: float64, or float32 when
sigmas / timesteps are given) this file runs the same numpy expressions on the same types; where it
computes in torch float32 (the training schedule in ``__init__``, timesteps = sigmas * 1000, the steps)
the same operations run on float32 arrays and ``np.float32`` scalars, so results agree to the bit
(beta sigmas excepted: see ``beta_ppf``).

Not used for the UNet models (not in ``SCHEDULERS``): flow-matching model families pick it through
``FLOW_SCHEDULERS``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .base import F32, Scheduler, SchedulerConfigError, as_float32, scalar_of, torch_linspace_f32
from .sigma_utils import exponential_sigmas, karras_sigmas

__all__ = [
    "FlowMatchEulerDiscreteScheduler",
    "A1111_NAME",
    "A1111_SCHEDULE_TYPE",
    "calculate_shift",
    "compute_empirical_mu",
    "flux_default_sigmas",
    "z_image_default_sigmas",
    "mu_from_config",
    "img2img_timesteps",
    "beta_cdf",
    "beta_ppf",
]

# how an A1111-style PNG "parameters" text names this sampler: "Sampler: Euler, Schedule type: Simple"
A1111_NAME = "Euler"
A1111_SCHEDULE_TYPE = "Simple"

# config keys the class does not take but whose values from_config keeps, as diffusers keeps them in
# .config where they are read: sigma_min / sigma_max by the Karras / exponential / beta conversions,
# use_flow_sigmas by the FLUX pipelines (no default sigmas then)
KEPT_EXTRA_KEYS = ("sigma_min", "sigma_max", "use_flow_sigmas")


# --------------------------------------------------------------------------------------------------
# the pipelines' helpers
# --------------------------------------------------------------------------------------------------


def calculate_shift(
    image_seq_len,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
):
    """``mu`` growing linearly with the number of image tokens (diffusers' pipeline_flux.calculate_shift,
    also used by Z-Image, SD3, Qwen-Image...)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    mu = image_seq_len * m + b
    return mu


def compute_empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's (dev and klein) ``mu`` from the number of image tokens and of steps
    (diffusers' pipeline_flux2.compute_empirical_mu, copied into pipeline_flux2_klein)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666

    if image_seq_len > 4300:
        mu = a2 * image_seq_len + b2
        return float(mu)

    m_200 = a2 * image_seq_len + b2
    m_10 = a1 * image_seq_len + b1

    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    mu = a * num_steps + b

    return float(mu)


def mu_from_config(config, image_seq_len: int):
    """``calculate_shift`` with the scheduler config's sequence lengths and shifts, as the FLUX.1 and
    Z-Image pipelines call it (``config.get(key, default)``)."""
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )


def flux_default_sigmas(num_inference_steps: int) -> np.ndarray:
    """The sigmas FLUX.1 and FLUX.2 (klein) pass when none are given: float64 ``np.linspace(1, 1/n, n)``.
    (Those pipelines pass none when ``scheduler.config`` has a true ``use_flow_sigmas``: then the
    scheduler's own linspace is used.)"""
    return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)


def z_image_default_sigmas(num_inference_steps: int) -> list[float]:
    """Z-Image's ``get_default_z_image_sigmas``: ``torch.linspace(1.0, 1/n, n).tolist()`` (float32 values)."""
    n = num_inference_steps
    return [float(v) for v in torch_linspace_f32(1.0, 1 / n, n)]


def img2img_timesteps(scheduler: "FlowMatchEulerDiscreteScheduler", num_inference_steps: int, strength: float):
    """What Z-Image img2img's ``get_timesteps`` does after set_timesteps: the timesteps left after
    skipping the first ``n - n * strength`` (float arithmetic, truncated), with the scheduler's begin
    index set there. Returns ``(timesteps, steps_left)``; the init latents are then
    ``scheduler.scale_noise(image_latents, timesteps[:1], noise)``."""
    init_timestep = min(num_inference_steps * strength, num_inference_steps)
    t_start = int(max(num_inference_steps - init_timestep, 0))
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, num_inference_steps - t_start


# --------------------------------------------------------------------------------------------------
# beta distribution (for use_beta_sigmas), without scipy
# --------------------------------------------------------------------------------------------------


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes' betacf)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)`` in float64 (to a few ulps)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse of ``beta_cdf`` in x (``scipy.stats.beta.ppf(q, a, b)``), by bisection down to adjacent
    doubles. Agrees with scipy to about 1e-15, so float32 sigmas made from it agree to the bit or one ulp."""
    q = float(q)
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    while True:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return lo if abs(beta_cdf(lo, a, b) - q) <= abs(beta_cdf(hi, a, b) - q) else hi


# --------------------------------------------------------------------------------------------------
# the scheduler
# --------------------------------------------------------------------------------------------------


class FlowMatchEulerDiscreteScheduler(Scheduler):
    """Euler steps along the flow: ``x_next = x + (sigma_next - sigma) * v``; with
    ``stochastic_sampling`` the next sample is re-noised from the predicted ``x_0`` instead."""

    name = "flow_euler"
    diffusers_class = "FlowMatchEulerDiscreteScheduler"
    order = 1
    defaults = {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "time_shift_type": "exponential",
        "stochastic_sampling": False,
    }

    def __init__(self, **config: Any):
        # no betas here: Scheduler.__init__ is not used
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected config keys: {', '.join(unknown)}")
        self.config: dict[str, Any] = {**self.defaults, **config}
        self.num_inference_steps = None
        self._check_config()
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        timesteps = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1].copy()
        sigmas = timesteps / F32(n_train)  # torch float32 from here
        shift = cfg["shift"]
        if not cfg["use_dynamic_shifting"]:
            sigmas = F32(shift) * sigmas / (F32(1.0) + F32(shift - 1) * sigmas)
        self.timesteps = sigmas * F32(n_train)
        self.sigmas = sigmas
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._shift = shift
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])

    @classmethod
    def from_config(cls, config) -> "FlowMatchEulerDiscreteScheduler":
        """As ``Scheduler.from_config``; in addition the ``KEPT_EXTRA_KEYS`` given, which the class does not
        take, are kept in the config, as diffusers keeps unexpected keys in ``.config``: its Karras /
        exponential / beta conversions read ``sigma_min`` / ``sigma_max`` there."""
        scheduler = super().from_config(config)
        for key in KEPT_EXTRA_KEYS:
            if key in config:
                scheduler.config[key] = config[key]
        return scheduler

    def _check_config(self) -> None:
        cfg = self.config
        if sum(bool(cfg[k]) for k in ("use_beta_sigmas", "use_exponential_sigmas", "use_karras_sigmas")) > 1:
            raise SchedulerConfigError(
                "flow_euler: use only one of use_beta_sigmas, use_exponential_sigmas and use_karras_sigmas"
            )
        if cfg["time_shift_type"] not in ("exponential", "linear"):
            raise SchedulerConfigError(
                f"flow_euler: time_shift_type {cfg['time_shift_type']!r} is not supported; use exponential or linear"
            )

    # bookkeeping ---------------------------------------------------------------------------------
    @property
    def shift(self):
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps: np.ndarray | None = None) -> int:
        """Position of ``timestep`` in the schedule; the second match if it occurs more than once."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        hits = np.nonzero(np.asarray(schedule) == F32(scalar_of(timestep)))[0]
        if len(hits) == 0:
            raise ValueError(f"{self.name}: timestep {timestep!r} is not in the schedule")
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    # schedule ------------------------------------------------------------------------------------
    def time_shift(self, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            if self.config["time_shift_type"] == "exponential":
                return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
            return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t: np.ndarray) -> np.ndarray:
        one_minus_z = 1 - t
        scale_factor = one_minus_z[-1] / (1 - self.config["shift_terminal"])
        return 1 - (one_minus_z / scale_factor)

    def _check_lengths(self, num_inference_steps, sigmas, timesteps, mu) -> int:
        if self.config["use_dynamic_shifting"] and mu is None:
            raise ValueError("flow_euler: mu must be passed to set_timesteps when use_dynamic_shifting is set")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError("flow_euler: sigmas and timesteps should have the same length")
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (
                timesteps is not None and len(timesteps) != num_inference_steps
            ):
                raise ValueError("flow_euler: sigmas and timesteps should have num_inference_steps values")
            return int(num_inference_steps)
        if sigmas is None and timesteps is None:
            raise ValueError("flow_euler: pass num_inference_steps, sigmas or timesteps")
        return len(sigmas) if sigmas is not None else len(timesteps)

    def _convert_sigmas(self, sigmas: np.ndarray, n: int) -> np.ndarray:
        """Karras / exponential / beta spacing between the schedule's ends (float64, as diffusers)."""
        cfg = self.config
        sigma_min, sigma_max = cfg.get("sigma_min"), cfg.get("sigma_max")
        sigma_min = float(sigmas[-1]) if sigma_min is None else sigma_min
        sigma_max = float(sigmas[0]) if sigma_max is None else sigma_max
        if cfg["use_karras_sigmas"]:
            return karras_sigmas(sigma_min, sigma_max, n)
        if cfg["use_exponential_sigmas"]:
            return exponential_sigmas(sigma_min, sigma_max, n)
        if cfg["use_beta_sigmas"]:
            ppfs = [beta_ppf(q, 0.6, 0.6) for q in 1 - np.linspace(0, 1, n)]
            return np.array([sigma_min + (ppf * (sigma_max - sigma_min)) for ppf in ppfs])
        return sigmas

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        sigmas: Sequence[float] | np.ndarray | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """As diffusers: ``num_inference_steps`` alone gives the linspace between the training sigmas' ends
        (float64); given ``sigmas`` (float32) are shifted (``shift``, or ``mu`` with dynamic shifting);
        given ``timesteps`` are kept as they are (float32)."""
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        n = self._check_lengths(num_inference_steps, sigmas, timesteps, mu)
        self.num_inference_steps = n

        given_timesteps = timesteps is not None
        if given_timesteps:
            timesteps = np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if timesteps is None:
                timesteps = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, n)
            sigmas = timesteps / n_train
        else:
            sigmas = np.array(sigmas).astype(np.float32)
            n = len(sigmas)

        if cfg["use_dynamic_shifting"]:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        if cfg["shift_terminal"]:
            sigmas = self.stretch_shift_to_terminal(sigmas)
        sigmas = self._convert_sigmas(sigmas, n)

        # torch float32 from here
        sigmas = np.asarray(sigmas).astype(F32)
        timesteps = timesteps if given_timesteps else sigmas * F32(n_train)
        if cfg["invert_sigmas"]:
            sigmas = F32(1.0) - sigmas
            timesteps = sigmas * F32(n_train)
            end = np.ones(1, dtype=F32)
        else:
            end = np.zeros(1, dtype=F32)
        self.timesteps = np.asarray(timesteps, dtype=F32)
        self.sigmas = np.concatenate([sigmas, end]).astype(F32)
        self._step_index = None
        self._begin_index = None

    # sampling ------------------------------------------------------------------------------------
    def scale_model_input(self, sample: np.ndarray, timestep) -> np.ndarray:
        return sample

    def scale_noise(self, sample: np.ndarray, timestep, noise: np.ndarray) -> np.ndarray:
        """Forward process ``sigma * noise + (1 - sigma) * sample`` at ``timestep`` (one value, or one per
        batch item): at the begin index when one is set (img2img), else where the timestep is found."""
        sample = as_float32(sample)
        ts = np.asarray(timestep).reshape(-1)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in ts]
        elif self._step_index is not None:
            indices = [self._step_index] * len(ts)
        else:
            indices = [self._begin_index] * len(ts)
        sigma = self.sigmas[indices].reshape((-1,) + (1,) * (sample.ndim - 1))
        return (sigma * as_float32(noise) + (F32(1.0) - sigma) * sample).astype(F32)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep) -> np.ndarray:
        """The flow-matching forward process (``scale_noise``), not the DDPM one."""
        return self.scale_noise(original, timestep, noise)

    def step(
        self,
        model_output: np.ndarray,
        timestep,
        sample: np.ndarray,
        rng=None,
        per_token_timesteps: np.ndarray | None = None,
    ) -> np.ndarray:
        """One Euler step from ``sample`` at ``timestep`` with the model's velocity ``model_output``.
        ``rng`` (anything with ``.randn(shape)``) is needed with stochastic_sampling. ``per_token_timesteps``
        (LTX-style, shape ``(batch, tokens)``) steps each token from its own sigma to the next lower one
        of the schedule, with diffusers' sign (``dt = sigma - sigma_next``)."""
        self._require_timesteps()
        if isinstance(timestep, (int, np.integer)):
            raise ValueError(f"{self.name}: pass one of scheduler.timesteps to step(), not an integer index")
        if self._step_index is None:
            self._init_step_index(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)

        if per_token_timesteps is not None:
            per_token_sigmas = as_float32(per_token_timesteps) / F32(self.config["num_train_timesteps"])
            sigmas = self.sigmas[:, None, None]
            lower_mask = sigmas < per_token_sigmas[None] - F32(1e-6)
            lower_sigmas = (lower_mask * sigmas).max(axis=0)
            current_sigma = per_token_sigmas[..., None]
            next_sigma = lower_sigmas[..., None]
            dt = current_sigma - next_sigma
        else:
            current_sigma = self.sigmas[self._step_index]
            next_sigma = self.sigmas[self._step_index + 1]
            dt = next_sigma - current_sigma

        if self.config["stochastic_sampling"]:
            if rng is None:
                raise ValueError("flow_euler: stochastic_sampling needs an rng (anything with .randn(shape))")
            x0 = sample - current_sigma * model_output
            noise = as_float32(rng.randn(sample.shape))
            prev_sample = (F32(1.0) - next_sigma) * x0 + next_sigma * noise
        else:
            prev_sample = sample + dt * model_output
        self._step_index += 1
        return np.asarray(prev_sample, dtype=F32)
