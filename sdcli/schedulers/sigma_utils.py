"""Sigma-space helpers shared by the schedulers: sigma schedules (Karras, exponential,
log-linear), float32 scalar maths, and the base of the multistep solvers that work with
``alpha_t = 1 / sqrt(1 + sigma^2)`` and ``sigma_t = sigma * alpha_t`` (DPM-Solver++, UniPC)."""

from __future__ import annotations

import math

import numpy as np

from .base import F32, Scheduler, as_float32, check_spacing, scalar_of

__all__ = [
    "karras_sigmas",
    "exponential_sigmas",
    "log32",
    "exp32",
    "expm1_32",
    "train_sigmas",
    "sigma_to_t",
    "solve_f32",
    "AlphaSigmaScheduler",
]


# --------------------------------------------------------------------------------------------------
# sigma schedules (float64 numpy, as in diffusers)
# --------------------------------------------------------------------------------------------------


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: ``n`` sigmas from sigma_max down to sigma_min, uniform in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    lo = float(sigma_min) ** (1 / rho)
    hi = float(sigma_max) ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """``n`` sigmas from sigma_max down to sigma_min, uniform in log(sigma)."""
    return np.exp(np.linspace(math.log(float(sigma_max)), math.log(float(sigma_min)), n))


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps whose log-sigma (linearly interpolated) equals log(sigma)."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10)).reshape(-1)
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigmas.shape)


def sigma_schedule(config, timesteps: np.ndarray, alphas_cumprod: np.ndarray):
    """The sigmas at `timesteps` (interpolated in the training sigmas), or the config's
    Karras / exponential spacing between the same ends with the timesteps that match them.
    Returns (sigmas, timesteps, log of the training sigmas)."""
    train = train_sigmas(alphas_cumprod)
    log_sigmas = np.log(train)
    sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    n = len(sigmas)
    if config["use_karras_sigmas"]:
        sigmas = karras_sigmas(sigmas[-1], sigmas[0], n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    elif config["use_exponential_sigmas"]:
        sigmas = exponential_sigmas(sigmas[-1], sigmas[0], n)
        timesteps = sigma_to_t(sigmas, log_sigmas)
    return sigmas, timesteps, log_sigmas


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """float32 ``sqrt((1 - a) / a)`` for every training timestep (ascending in t)."""
    ac = as_float32(alphas_cumprod)
    return np.sqrt((F32(1.0) - ac) / ac)


# --------------------------------------------------------------------------------------------------
# float32 scalar maths: evaluated in float64 and rounded once (torch's float32 kernels are within one
# ulp of that)
# --------------------------------------------------------------------------------------------------


def log32(x) -> np.float32:
    x = float(x)
    if x == 0.0:
        return F32(-np.inf)
    return F32(math.log(x)) if x > 0 else F32(np.nan)


def exp32(x) -> np.float32:
    x = float(x)
    try:
        return F32(math.exp(x))
    except OverflowError:
        return F32(np.inf)


def expm1_32(x) -> np.float32:
    x = float(x)
    if x == -math.inf:
        return F32(-1.0)
    try:
        return F32(math.expm1(x))
    except OverflowError:
        return F32(np.inf)


def solve_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve the small system ``a @ x = b`` in float32 by LU with partial pivoting (as LAPACK's sgesv)."""
    a = np.array(a, dtype=F32)
    x = np.array(b, dtype=F32)
    n = a.shape[0]
    for k in range(n):
        p = k + int(np.argmax(np.abs(a[k:, k])))
        if p != k:
            a[[k, p]] = a[[p, k]]
            x[[k, p]] = x[[p, k]]
        inv = F32(1.0) / a[k, k]
        for r in range(k + 1, n):
            factor = a[r, k] * inv
            a[r, k + 1 :] = a[r, k + 1 :] - factor * a[k, k + 1 :]
            x[r] = x[r] - factor * x[k]
    for k in range(n - 1, -1, -1):
        acc = x[k]
        for c in range(k + 1, n):
            acc = acc - a[k, c] * x[c]
        x[k] = acc / a[k, k]
    return x


# --------------------------------------------------------------------------------------------------
# multistep solvers in (alpha_t, sigma_t) form
# --------------------------------------------------------------------------------------------------


class AlphaSigmaScheduler(Scheduler):
    """Shared parts of DPM-Solver(++) multistep and UniPC: integer timesteps (``n + 1`` point spacing),
    sigmas, the step index / begin index bookkeeping, ``alpha_t`` / ``sigma_t`` / ``lambda_t`` and add_noise."""

    def _setup(self) -> None:
        if self.config.get("rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = F32(2.0**-24)  # as diffusers: keep the last sigma finite
        self.sigmas = train_sigmas(self.alphas_cumprod)
        n = len(self)
        self.timesteps = np.linspace(0, n - 1, n, dtype=np.float32)[::-1].copy()
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        pass

    # bookkeeping ----------------------------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int) -> None:
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps: np.ndarray | None = None) -> int:
        """Position of ``timestep`` in the schedule: the second match if repeated, the last position if absent."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        hits = np.nonzero(schedule == scalar_of(timestep))[0]
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _begin_step(self, timestep) -> int:
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        return self._step_index

    # schedule -------------------------------------------------------------------------------------
    def _spaced_timesteps(self, n: int, last_timestep: int) -> np.ndarray:
        """Descending int64 timesteps: ``n + 1`` points spread over [0, last_timestep), the last dropped."""
        cfg = self.config
        spacing = cfg["timestep_spacing"]
        check_spacing(spacing)
        if spacing == "linspace":
            return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        if spacing == "leading":
            ratio = last_timestep // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            return ts + int(cfg["steps_offset"])
        ratio = len(self) / n
        return np.arange(last_timestep, 0, -ratio).round().copy().astype(np.int64) - 1

    def _first_train_sigma(self) -> np.float32:
        ac0 = self.alphas_cumprod[0]
        return np.sqrt((F32(1.0) - ac0) / ac0)

    # maths -----------------------------------------------------------------------------------------
    @staticmethod
    def alpha_sigma(sigma) -> tuple[np.float32, np.float32]:
        sigma = F32(sigma)
        alpha_t = F32(1.0) / np.sqrt(sigma * sigma + F32(1.0))
        return alpha_t, sigma * alpha_t

    def lambda_of(self, sigma) -> np.float32:
        alpha_t, sigma_t = self.alpha_sigma(sigma)
        return log32(alpha_t) - log32(sigma_t)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: np.ndarray, timestep) -> np.ndarray:
        return sample

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep) -> np.ndarray:
        if self._begin_index is None:
            index = self.index_for_timestep(timestep)
        elif self._step_index is not None:
            index = self._step_index
        else:
            index = self._begin_index
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[index])
        return alpha_t * as_float32(original) + sigma_t * as_float32(noise)
