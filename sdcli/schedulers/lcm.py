"""Latent Consistency Model multistep sampling (arXiv 2310.04378); mirrors diffusers' LCMScheduler.

Each step maps the noisy latents straight to a denoised estimate (the consistency function with
its boundary-condition scalings c_skip / c_out) and, except after the last step, noises that
estimate again down to the next timestep with fresh draws from the rng.  The last step returns
the denoised estimate itself, which is what the pipelines decode.
"""

from __future__ import annotations

import numpy as np

from .base import F32, Scheduler, SchedulerConfigError, as_float32, check_prediction_type, check_spacing, scalar_of

SIGMA_DATA = F32(0.5)


class LCMScheduler(Scheduler):
    name = "lcm"
    diffusers_class = "LCMScheduler"
    order = 1
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "trained_betas": None,
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",  # accepted, and unused by diffusers' LCMScheduler too
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
    }

    def _check_config(self) -> None:
        check_prediction_type(self, ("epsilon", "sample", "v_prediction"))
        check_spacing(self.config["timestep_spacing"])
        if self.config["thresholding"]:
            raise SchedulerConfigError("lcm: thresholding=True (dynamic thresholding) is not supported")

    def _setup(self) -> None:
        self.final_alpha_cumprod = F32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.timesteps = np.arange(0, len(self))[::-1].astype(np.int64)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def set_begin_index(self, begin_index: int) -> None:
        self._begin_index = int(begin_index)

    def set_timesteps(self, num_inference_steps: int, strength: float = 1.0,
                      original_inference_steps: int | None = None) -> None:
        """`num_inference_steps` timesteps taken evenly (by index) from the LCM training schedule of
        `original_inference_steps` timesteps, cut to its first `strength` part (img2img in
        diffusers' LatentConsistencyModelImg2ImgPipeline)."""
        n = int(num_inference_steps)
        n_train = len(self)
        original = int(original_inference_steps or self.config["original_inference_steps"])
        if original > n_train:
            raise ValueError(f"lcm: original_inference_steps={original} exceeds num_train_timesteps={n_train}")
        if n > n_train:
            raise ValueError(f"lcm: num_inference_steps={n} exceeds num_train_timesteps={n_train}")
        k = n_train // original
        origin = np.arange(1, int(original * strength) + 1, dtype=np.int64) * k - 1
        if len(origin) // n < 1:
            raise ValueError(
                f"lcm: {n} steps need original_inference_steps x strength ({original} x {strength:g} = "
                f"{int(original * strength)}) to be at least {n}; use fewer steps or a higher strength"
            )
        if n > original:
            raise ValueError(f"lcm: {n} steps exceed original_inference_steps={original}")
        origin = origin[::-1].copy()
        indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self.timesteps = origin[indices]
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        hits = np.nonzero(self.timesteps == scalar_of(timestep))[0]
        if len(hits) == 0:
            raise ValueError(f"lcm: timestep {timestep!r} is not in the schedule")
        self._step_index = int(hits[1] if len(hits) > 1 else hits[0])

    def boundary_scalings(self, timestep: int) -> tuple[np.float32, np.float32]:
        """(c_skip, c_out) of the consistency function at a discrete timestep."""
        scaled = F32(timestep) * F32(self.config["timestep_scaling"])
        denominator = scaled * scaled + SIGMA_DATA * SIGMA_DATA
        return SIGMA_DATA * SIGMA_DATA / denominator, scaled / np.sqrt(denominator)

    def step(self, model_output: np.ndarray, timestep, sample: np.ndarray, rng=None) -> np.ndarray:
        """The next latents: the denoised estimate noised to the next timestep, or after the last step
        the denoised estimate itself.  Draws one noise tensor from `rng` on every step but the last."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        model_output = as_float32(model_output)
        sample = as_float32(sample)
        t = int(scalar_of(timestep))
        i = self._step_index
        last = i == self.num_inference_steps - 1
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t

        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = F32(1.0) - a_t
        c_skip, c_out = self.boundary_scalings(t)

        pt = self.config["prediction_type"]
        if pt == "epsilon":
            pred_x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
        elif pt == "sample":
            pred_x0 = model_output
        else:  # v_prediction
            pred_x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
        if self.config["clip_sample"]:
            limit = F32(self.config["clip_sample_range"])
            pred_x0 = np.clip(pred_x0, -limit, limit)

        denoised = c_out * pred_x0 + c_skip * sample
        self._step_index = i + 1
        if last:
            return denoised
        if rng is None:
            raise ValueError("lcm: step() needs an rng (anything with .randn(shape)) for the noise between steps")
        noise = as_float32(rng.randn(model_output.shape))
        return np.sqrt(a_prev) * denoised + np.sqrt(F32(1.0) - a_prev) * noise
