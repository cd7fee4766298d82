"""What the scheduler tests share (test_schedulers.py, test_schedulers_more.py, test_dpmpp_sde.py):
SD 1.5's scheduler config, a stand-in for the UNet, ours and diffusers' scheduler made the way a
pipeline makes them, and the loop that runs the two side by side.

torch and diffusers are imported where used: the test modules skip themselves without them.
"""
from __future__ import annotations

import inspect

import numpy as np

from sdcli.util.rng import TorchRNG

RTOL = 1e-5
ATOL = 1e-5

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# configs that from_config must carry over as diffusers does: SD 1.5's, an SD 2-like one, and an
# Euler config with a key no scheduler takes (parametrize("cfg", CONFIGS, ids=CONFIG_IDS))
CONFIGS = [
    SD15,
    {**SD15, "timestep_spacing": "trailing", "prediction_type": "v_prediction", "use_karras_sigmas": True},
    {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "interpolation_type": "linear",
     "steps_offset": 1, "timestep_spacing": "leading", "sigma_min": None, "rescale_betas_zero_snr": False,
     "thresholding": False, "clip_sample": False, "unknown_key": 3},
]
CONFIG_IDS = ["sd15", "sd2like", "euler_json"]

FIXED = np.random.default_rng(1234).standard_normal((1, 4, 8, 8)).astype(np.float32)
SHAPE = FIXED.shape

# figures the tests measure on the way (largest differences from diffusers): printed in the
# terminal summary (conftest.py), not checked
FIGURES: dict[str, float] = {}


def record(key: str, value: float) -> None:
    """Keeps the largest value seen for `key` in FIGURES."""
    FIGURES[key] = max(FIGURES.get(key, 0.0), float(value))


def sd15_config(extra: dict, pred: str) -> dict:
    return {**SD15, **extra, "prediction_type": pred}


def scheduler_pair(name: str, cfg: dict, diffusers_class, **forced):
    """Ours via create_scheduler; diffusers' the way a pipeline switches schedulers:
    ``XScheduler.from_config(pipe.scheduler.config, **forced)`` from the loaded PNDM."""
    import diffusers

    from sdcli.schedulers import create_scheduler

    ours = create_scheduler(name, cfg)
    loaded = diffusers.PNDMScheduler.from_config(cfg)
    return ours, diffusers_class.from_config(loaded.config, **forced)


def diffusers_defaults(diffusers_class) -> dict:
    """The constructor's defaults."""
    params = inspect.signature(diffusers_class.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def init_args(name: str, cfg) -> dict:
    """The constructor arguments of our scheduler `name` in a config (diffusers' .config also keeps
    unexpected keys around)."""
    from sdcli.schedulers import SCHEDULERS

    return {k: cfg[k] for k in SCHEDULERS[name].defaults}


def fake_model(sample: np.ndarray, t) -> np.ndarray:
    """Stands in for the UNet: depends on the sample and the timestep."""
    t = float(t)
    return (np.float32(0.1) * sample + np.float32(np.sin(t / 100.0)) * FIXED).astype(np.float32)


def diffusers_step(sched, out: np.ndarray, t, sample: np.ndarray, gen) -> np.ndarray:
    """diffusers' step, given the torch generator where it takes one."""
    import torch

    kwargs = {}
    if "generator" in inspect.signature(sched.step).parameters:
        kwargs["generator"] = gen
    res = sched.step(torch.from_numpy(out), t, torch.from_numpy(sample), return_dict=False, **kwargs)
    return res[0].numpy()


def run_loop(ours, theirs, lat_ours, lat_theirs, ts_ours, ts_theirs, seed, scale_atol=False) -> float:
    """Each side denoises its own latents; compare after every step (RTOL relative + ATOL absolute;
    with `scale_atol`, ATOL times the largest latent seen so far where that is more). Returns the
    largest absolute difference."""
    import torch

    rng = TorchRNG(seed)
    gen = torch.Generator("cpu").manual_seed(seed)
    worst = float(np.max(np.abs(lat_ours - lat_theirs)))
    scale = 0.0  # largest latent seen so far (error budget of the ill-conditioned schedules)
    assert len(ts_ours) == len(ts_theirs)
    for i, (t_o, t_t) in enumerate(zip(ts_ours, ts_theirs)):
        scale = max(scale, float(np.max(np.abs(lat_ours))))
        atol = max(ATOL, 1e-5 * scale) if scale_atol else ATOL
        x_o = ours.scale_model_input(lat_ours, t_o)
        x_t = theirs.scale_model_input(torch.from_numpy(lat_theirs), t_t).numpy()
        np.testing.assert_allclose(x_o, x_t, rtol=RTOL, atol=atol, err_msg=f"scale_model_input, step {i}")
        lat_ours = ours.step(fake_model(x_o, t_o), t_o, lat_ours, rng)
        lat_theirs = diffusers_step(theirs, fake_model(x_t, float(t_t)), t_t, lat_theirs, gen)
        assert lat_ours.dtype == np.float32
        assert np.all(np.isfinite(lat_ours))
        np.testing.assert_allclose(lat_ours, lat_theirs, rtol=RTOL, atol=atol, err_msg=f"latents after step {i}")
        worst = max(worst, float(np.max(np.abs(lat_ours - lat_theirs))))
    return worst


def compare_schedules(ours, theirs, loose_timesteps: bool, same_dtype: bool = True) -> None:
    """Timesteps (exactly, or within 1e-6 with `loose_timesteps`; of the same dtype, or with
    `same_dtype` False of the same kind), init_noise_sigma, sigmas (where diffusers' has them) and
    alphas_cumprod as diffusers'."""
    ref_ts = theirs.timesteps.numpy()
    if same_dtype:
        assert ours.timesteps.dtype == ref_ts.dtype
    else:
        assert ours.timesteps.dtype.kind == ref_ts.dtype.kind
    if loose_timesteps:
        np.testing.assert_allclose(ours.timesteps, ref_ts, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(ours.timesteps, ref_ts)
    np.testing.assert_allclose(ours.init_noise_sigma, float(theirs.init_noise_sigma), rtol=1e-6)
    # zero-SNR rescaling goes through float32 sqrt and 1 - alphas_cumprod cancels digits: 1e-5 there
    rtol = 1e-5 if ours.config.get("rescale_betas_zero_snr") else 1e-6
    if hasattr(theirs, "sigmas"):
        np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=rtol, atol=1e-6)


def img2img_timesteps(ours, theirs, strength: float, n: int = 20):
    """Both schedulers set to `n` steps and cut as StableDiffusionImg2ImgPipeline.get_timesteps
    cuts them: (t_start, ours' timesteps, diffusers' timesteps)."""
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    init_timestep = min(int(n * strength), n)
    t_start = max(n - init_timestep, 0)
    return t_start, ours.timesteps[t_start * ours.order :], theirs.timesteps[t_start * theirs.order :]


def noised_init_latents(ours, theirs, t_ours, ts_theirs):
    """img2img's first latents, add_noise of a fixed init at `t_ours` / `ts_theirs` (a 1-element
    tensor) on each side; the two must agree."""
    import torch

    rng = TorchRNG(77)
    init_latents = rng.randn(SHAPE) * np.float32(0.8)
    noise = rng.randn(SHAPE)
    lat_ours = ours.add_noise(init_latents, noise, t_ours)
    lat_theirs = theirs.add_noise(torch.from_numpy(init_latents), torch.from_numpy(noise), ts_theirs).numpy()
    np.testing.assert_allclose(lat_ours, lat_theirs, rtol=RTOL, atol=ATOL)
    return lat_ours, lat_theirs
