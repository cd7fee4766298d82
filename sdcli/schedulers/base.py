"""Pieces shared by the numpy schedulers: config handling, beta schedules, timestep spacing.

Arithmetic follows diffusers running on torch float32 on the CPU, so that a loop driven by these
schedulers tracks the diffusers one to float32 rounding: betas come from torch's float32 ``linspace``
(reproduced with its fused multiply-add on x86), ``alphas_cumprod`` from torch's ``cumprod`` (which
accumulates in float64 and stores float32), and every per-step scalar is an ``np.float32``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import numpy as np

from sdcli.util.rng import fma_f32

F32 = np.float32

SPACINGS = ("linspace", "leading", "trailing")


class SchedulerConfigError(ValueError):
    """A scheduler config asks for something this implementation does not do."""


# --------------------------------------------------------------------------------------------------
# torch float32 helpers
# --------------------------------------------------------------------------------------------------


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` as computed by torch's CPU kernel
    (x86 builds with AVX2, where ``start + step * i`` is compiled to a fused multiply-add)."""
    if steps <= 0:
        return np.zeros(0, dtype=F32)
    a, b = F32(start), F32(end)
    if steps == 1:
        return np.array([a], dtype=F32)
    step = (b - a) / F32(steps - 1)
    half = steps // 2
    idx = np.arange(steps, dtype=np.int64)
    low = fma_f32(step, idx[:half].astype(F32), a)
    high = fma_f32(-step, (steps - 1 - idx[half:]).astype(F32), b)
    return np.concatenate([low, high]).astype(F32)


def torch_cumprod_f32(x: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of a float32 vector on the CPU: a float64 running product, stored as float32."""
    return np.cumprod(np.asarray(x, dtype=np.float64)).astype(F32)


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine ("squaredcos_cap_v2") schedule: betas from the alpha-bar curve, computed in float64."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_diffusion_timesteps) / alpha_bar(i / num_diffusion_timesteps), max_beta)
        for i in range(num_diffusion_timesteps)
    ]
    return np.array(betas, dtype=np.float64).astype(F32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so the last timestep has zero SNR (arXiv 2305.08891, Algorithm 1), in float32."""
    alphas = F32(1.0) - betas
    sqrt_ac = np.sqrt(torch_cumprod_f32(alphas))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = sqrt_ac - last
    sqrt_ac = sqrt_ac * (first / (first - last))
    alphas_bar = sqrt_ac * sqrt_ac
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (F32(1.0) - alphas).astype(F32)


def make_betas(config: Mapping[str, Any]) -> np.ndarray:
    """float32 betas from ``trained_betas`` or ``beta_schedule`` / ``beta_start`` / ``beta_end``."""
    n = int(config["num_train_timesteps"])
    trained = config.get("trained_betas")
    schedule = config.get("beta_schedule", "linear")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64).astype(F32).reshape(-1)
    elif schedule == "linear":
        betas = torch_linspace_f32(config["beta_start"], config["beta_end"], n)
    elif schedule == "scaled_linear":
        root = torch_linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n)
        betas = root * root
    elif schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(n)
    else:
        raise SchedulerConfigError(
            f"beta_schedule {schedule!r} is not supported; use linear, scaled_linear, squaredcos_cap_v2 or trained_betas"
        )
    if config.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    return betas


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
    return torch_cumprod_f32(F32(1.0) - betas)


# --------------------------------------------------------------------------------------------------
# timestep spacing (numpy in diffusers too)
# --------------------------------------------------------------------------------------------------


def check_spacing(spacing: str) -> None:
    if spacing not in SPACINGS:
        raise SchedulerConfigError(f"timestep_spacing {spacing!r} is not supported; use one of {', '.join(SPACINGS)}")


def leading_timesteps(num_train: int, num_inference_steps: int, steps_offset: int) -> np.ndarray:
    """Ascending int64 ``[0, r, 2r, ...] + steps_offset`` with ``r = num_train // num_inference_steps``."""
    ratio = num_train // num_inference_steps
    timesteps = (np.arange(0, num_inference_steps) * ratio).round().astype(np.int64) + int(steps_offset)
    if len(timesteps) and timesteps[-1] >= num_train:  # diffusers would index past its alphas here
        most = (num_train - 1 - int(steps_offset)) // max(ratio, 1) + 1 if ratio > 1 else num_train - int(steps_offset)
        raise ValueError(f"this scheduler's leading timestep spacing (steps_offset {steps_offset}) has room for "
                         f"at most {most} steps of {num_train} training steps")
    return timesteps


def linspace_timesteps(num_train: int, num_inference_steps: int) -> np.ndarray:
    """Ascending ``linspace(0, num_train - 1, n)`` rounded to int64."""
    return np.linspace(0, num_train - 1, num_inference_steps).round().astype(np.int64)


def trailing_timesteps(num_train: int, num_inference_steps: int) -> np.ndarray:
    """Descending int64 ``round(arange(num_train, 0, -num_train / n)) - 1``."""
    ratio = num_train / num_inference_steps
    return np.round(np.arange(num_train, 0, -ratio)).astype(np.int64) - 1


def as_float32(x) -> np.ndarray:
    arr = np.asarray(x)
    return arr if arr.dtype == F32 else arr.astype(F32)


def scalar_of(timestep) -> Any:
    """A timestep given as a python number, numpy scalar or 0-d / 1-element array, as a numpy scalar."""
    arr = np.asarray(timestep)
    if arr.size != 1:
        raise ValueError(f"expected one timestep, got an array of shape {arr.shape}")
    return arr.reshape(())[()]


# --------------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------------


class Scheduler:
    """Common behaviour. Subclasses set the class attributes and implement the numerical methods."""

    name: ClassVar[str] = ""
    diffusers_class: ClassVar[str] = ""
    order: ClassVar[int] = 1
    # diffusers' __init__ arguments of the class, with their defaults (the keys from_config accepts).
    defaults: ClassVar[dict[str, Any]] = {}

    timesteps: np.ndarray
    num_inference_steps: int | None

    def __init__(self, **config: Any):
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected config keys: {', '.join(unknown)}")
        self.config: dict[str, Any] = {**self.defaults, **config}
        self.num_inference_steps = None
        self._check_config()
        self.betas = make_betas(self.config)
        self.alphas = F32(1.0) - self.betas
        self.alphas_cumprod = torch_cumprod_f32(self.alphas)
        self._setup()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Scheduler":
        """Like diffusers' ``XScheduler.from_config(other_config)``: keys this class accepts carry over,
        others (and ``_``-prefixed keys) are ignored, keys listed in ``_use_default_values`` are dropped,
        and this class's own defaults fill the rest."""
        used_defaults = set(config.get("_use_default_values", None) or ())
        kwargs = {
            k: v
            for k, v in config.items()
            if not k.startswith("_") and k in cls.defaults and k not in used_defaults
        }
        return cls(**kwargs)

    # hooks -------------------------------------------------------------------------------------
    def _check_config(self) -> None:
        pass

    def _setup(self) -> None:
        pass

    # interface ---------------------------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def set_begin_index(self, begin_index: int) -> None:
        """Only the Euler-type schedulers keep a begin index; elsewhere (as in diffusers) this does nothing."""

    def scale_model_input(self, sample: np.ndarray, timestep) -> np.ndarray:
        return sample

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        raise NotImplementedError

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep) -> np.ndarray:
        """DDPM forward process ``sqrt(a_t) * x0 + sqrt(1 - a_t) * noise`` at an integer timestep."""
        t = int(scalar_of(timestep))
        a = self.alphas_cumprod[t]
        return np.sqrt(a) * as_float32(original) + np.sqrt(F32(1.0) - a) * as_float32(noise)

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise RuntimeError(f"{type(self).__name__}: call set_timesteps() before step()")

    def __len__(self) -> int:
        return int(self.config["num_train_timesteps"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def check_prediction_type(scheduler: Scheduler, allowed: tuple[str, ...]) -> None:
    pt = scheduler.config["prediction_type"]
    if pt not in allowed:
        raise SchedulerConfigError(
            f"{scheduler.name}: prediction_type {pt!r} is not supported; use one of {', '.join(allowed)}"
        )
