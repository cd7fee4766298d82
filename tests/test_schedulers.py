"""The numpy schedulers against diffusers' (torch, float32): timesteps, sigmas and whole denoising loops."""

from __future__ import annotations

import numpy as np
import pytest

from sdcli.util.rng import TorchRNG
from sdcli.schedulers import (
    SCHEDULERS,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    create_scheduler,
    scheduler_names,
)
from tests.scheduler_checks import (
    ATOL,
    CONFIG_IDS,
    CONFIGS,
    FIXED,
    RTOL,
    SD15,
    SHAPE,
    compare_schedules,
    diffusers_defaults,
    img2img_timesteps,
    init_args,
    noised_init_latents,
    run_loop,
    scheduler_pair,
    sd15_config,
)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

DIFFUSERS_CLASSES = {
    "pndm": diffusers.PNDMScheduler,
    "ddim": diffusers.DDIMScheduler,
    "euler": diffusers.EulerDiscreteScheduler,
    "euler_a": diffusers.EulerAncestralDiscreteScheduler,
}

PREDICTIONS = {
    "pndm": ["epsilon", "v_prediction"],
    "ddim": ["epsilon", "v_prediction", "sample"],
    "euler": ["epsilon", "v_prediction", "sample"],
    "euler_a": ["epsilon", "v_prediction"],
}

COMMON_VARIANTS = {
    "sd15": {},
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "linear_betas": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "steps_offset": 0},
    "cosine_betas": {"beta_schedule": "squaredcos_cap_v2"},
}
EXTRA_VARIANTS = {
    "pndm": {
        "prk": {"skip_prk_steps": False},
        "prk_linspace": {"skip_prk_steps": False, "timestep_spacing": "linspace"},
        "alpha_one": {"set_alpha_to_one": True},
    },
    "ddim": {
        "clip": {"clip_sample": True, "clip_sample_range": 1.5},
        "alpha_one": {"set_alpha_to_one": True},
        "zero_snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        "trained_betas": {"trained_betas": list(np.linspace(0.0001, 0.02, 1000))},
    },
    "euler": {
        "karras": {"use_karras_sigmas": True},
        "karras_leading": {"use_karras_sigmas": True, "timestep_spacing": "leading"},
        "karras_sigma_min": {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
        "karras_range": {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0},
        "sigma_min_final": {"final_sigmas_type": "sigma_min"},
        "exponential": {"use_exponential_sigmas": True},
        "log_linear": {"interpolation_type": "log_linear"},
        "zero_snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        "continuous": {"timestep_type": "continuous"},
    },
    "euler_a": {
        "zero_snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
    },
}

# Timesteps derived from sigmas (Karras / exponential sigmas, continuous timesteps) agree to float32
# rounding, not bit for bit: the torch here computes float32 sqrt / log / exp with up to 1 ulp error,
# numpy (and IEEE sqrt) rounds correctly, and one ulp in a training sigma moves the interpolated t.
LOOSE_TIMESTEPS = {
    ("euler", v) for v in ("continuous", "karras", "karras_leading", "karras_sigma_min", "karras_range", "exponential")
}


def _cases():
    for name in DIFFUSERS_CLASSES:  # the other schedulers: tests/test_schedulers_more.py
        variants = {**COMMON_VARIANTS, **EXTRA_VARIANTS.get(name, {})}
        for vname, extra in variants.items():
            for pred in PREDICTIONS[name]:
                if vname == "continuous" and pred != "v_prediction":
                    continue
                if name == "ddim" and vname == "zero_snr" and pred == "epsilon":
                    continue  # x0 = (x - eps) / 0 at the first step, in diffusers too
                yield pytest.param(name, vname, extra, pred, id=f"{name}-{vname}-{pred}")


def _build(name: str, cfg: dict):
    """Ours via create_scheduler; diffusers' the way a pipeline gets it (load the model's class, then
    switch with from_config of its config)."""
    return scheduler_pair(name, cfg, DIFFUSERS_CLASSES[name])


# Schedules whose largest sigma is in the thousands (zero-SNR rescaling: 4096; cosine betas: 2e4): the
# first Euler step cancels latents of that size down to O(1), so one float32 ulp of the input (or of a
# sigma, see above) shows up as ~1e-3 absolute in the output, in diffusers as much as here. For those the
# absolute tolerance is 1e-5 times the largest latent seen so far instead of 1e-5.
ILL_CONDITIONED = {("euler", "zero_snr"), ("euler_a", "zero_snr"), ("euler", "cosine_betas"), ("euler_a", "cosine_betas")}


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("name,vname,extra,pred", list(_cases()))
def test_txt2img_loop_matches_diffusers(name, vname, extra, pred, steps):
    cfg = sd15_config(extra, pred)
    ours, theirs = _build(name, cfg)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    compare_schedules(ours, theirs, (name, vname) in LOOSE_TIMESTEPS, same_dtype=False)

    seed = 1000 + steps
    noise = TorchRNG(seed).randn(SHAPE)
    lat_ours = noise * ours.init_noise_sigma
    lat_theirs = (torch.from_numpy(noise) * theirs.init_noise_sigma).numpy()
    run_loop(
        ours, theirs, lat_ours, lat_theirs, ours.timesteps, theirs.timesteps, seed=seed + 1,
        scale_atol=(name, vname) in ILL_CONDITIONED,
    )


IMG2IMG_CASES = [
    pytest.param(name, vname, extra, pred, id=f"{name}-{vname}-{pred}")
    for name in DIFFUSERS_CLASSES
    for vname, extra, pred in [
        ("sd15", {}, "epsilon"),
        ("trailing", {"timestep_spacing": "trailing"}, "v_prediction"),
    ]
] + [
    pytest.param("pndm", "prk", {"skip_prk_steps": False}, "epsilon", id="pndm-prk-epsilon"),
    pytest.param("euler", "karras", {"use_karras_sigmas": True}, "epsilon", id="euler-karras-epsilon"),
]


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("name,vname,extra,pred", IMG2IMG_CASES)
def test_img2img_matches_diffusers(name, vname, extra, pred, strength):
    cfg = sd15_config(extra, pred)
    ours, theirs = _build(name, cfg)
    t_start, ts_ours, ts_theirs = img2img_timesteps(ours, theirs, strength)
    if (name, vname) in LOOSE_TIMESTEPS:
        np.testing.assert_allclose(ts_ours, ts_theirs.numpy(), rtol=1e-6)
    else:
        np.testing.assert_array_equal(ts_ours, ts_theirs.numpy())
    ours.set_begin_index(t_start * ours.order)
    if hasattr(theirs, "set_begin_index"):
        theirs.set_begin_index(t_start * theirs.order)
    lat_ours, lat_theirs = noised_init_latents(ours, theirs, ts_ours[0], ts_theirs[:1])
    run_loop(ours, theirs, lat_ours, lat_theirs, ts_ours, ts_theirs, seed=5)


@pytest.mark.parametrize("name", ["euler", "euler_a"])
def test_euler_add_noise_without_begin_index(name):
    """Without set_begin_index the Euler schedulers look the timestep up (second match if repeated)."""
    ours, theirs = _build(name, sd15_config({"timestep_spacing": "leading"}, "epsilon"))
    ours.set_timesteps(15)
    theirs.set_timesteps(15)
    x0 = TorchRNG(1).randn(SHAPE)
    noise = TorchRNG(2).randn(SHAPE)
    t = ours.timesteps[6]
    got = ours.add_noise(x0, noise, t)
    ref = theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), theirs.timesteps[6:7]).numpy()
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    run_loop(ours, theirs, got, ref, ours.timesteps[6:], theirs.timesteps[6:], seed=3)


# ---------------------------------------------------------------------------------------------------
# config handling
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DIFFUSERS_CLASSES))
def test_defaults_are_diffusers_defaults(name):
    assert SCHEDULERS[name].defaults == diffusers_defaults(DIFFUSERS_CLASSES[name])


@pytest.mark.parametrize("name", list(DIFFUSERS_CLASSES))
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_from_config_carries_keys_like_diffusers(name, cfg):
    ours = create_scheduler(name, cfg)
    ref = DIFFUSERS_CLASSES[name].from_config(cfg)
    assert ours.config == init_args(name, ref.config)
    # switching from an instantiated scheduler's config (with _use_default_values) gives the same
    via_loaded = DIFFUSERS_CLASSES[name].from_config(
        getattr(diffusers, cfg["_class_name"]).from_config(cfg).config
    )
    ours2 = SCHEDULERS[name].from_config(getattr(diffusers, cfg["_class_name"]).from_config(cfg).config)
    assert ours2.config == init_args(name, via_loaded.config)


def test_sd15_spacing_defaults():
    # SD 1.5's config has no timestep_spacing: each class falls back to its own default
    assert create_scheduler("euler", SD15).config["timestep_spacing"] == "linspace"
    assert create_scheduler("euler_a", SD15).config["timestep_spacing"] == "linspace"
    assert create_scheduler("ddim", SD15).config["timestep_spacing"] == "leading"
    pndm = create_scheduler(None, SD15)
    assert isinstance(pndm, PNDMScheduler)
    assert pndm.config["timestep_spacing"] == "leading"
    assert pndm.config["skip_prk_steps"] is True
    for name in SCHEDULERS:
        assert create_scheduler(name, SD15).config["steps_offset"] == 1
    # DDIM does not take skip_prk_steps; PNDM does not take clip_sample
    assert "skip_prk_steps" not in create_scheduler("ddim", SD15).config
    assert "clip_sample" not in pndm.config
    assert create_scheduler("ddim", SD15).config["clip_sample"] is False
    assert create_scheduler("ddim", {"_class_name": "PNDMScheduler"}).config["set_alpha_to_one"] is True


def test_registry_and_factory():
    assert scheduler_names()[:4] == ["pndm", "ddim", "euler", "euler_a"]
    assert SCHEDULERS["euler_a"] is EulerAncestralDiscreteScheduler
    for name, cls in ((n, SCHEDULERS[n]) for n in DIFFUSERS_CLASSES):
        assert cls.name == name
        assert cls.diffusers_class == DIFFUSERS_CLASSES[name].__name__
        assert cls.order == DIFFUSERS_CLASSES[name].order
        assert isinstance(create_scheduler(None, {**SD15, "_class_name": cls.diffusers_class}), cls)
    assert isinstance(create_scheduler("EulerDiscreteScheduler", SD15), EulerDiscreteScheduler)
    assert isinstance(create_scheduler("ddim", {"_class_name": "LMSDiscreteScheduler"}), DDIMScheduler)
    with pytest.raises(ValueError, match="supported"):
        create_scheduler(None, {**SD15, "_class_name": "DDPMScheduler"})
    with pytest.raises(ValueError):
        create_scheduler(None, {"beta_start": 0.1})
    with pytest.raises(ValueError, match="euler_a"):
        create_scheduler("no_such_sampler", SD15)


@pytest.mark.parametrize(
    "name,extra",
    [
        ("ddim", {"thresholding": True}),
        ("euler", {"use_beta_sigmas": True}),
        ("euler", {"use_karras_sigmas": True, "use_exponential_sigmas": True}),
        ("euler", {"interpolation_type": "cubic"}),
        ("euler", {"final_sigmas_type": "max"}),
        ("euler_a", {"prediction_type": "sample"}),
        ("pndm", {"prediction_type": "sample"}),
        ("pndm", {"timestep_spacing": "karras"}),
        ("ddim", {"beta_schedule": "sigmoid"}),
    ],
)
def test_unsupported_options_raise(name, extra):
    with pytest.raises(ValueError):
        create_scheduler(name, {**SD15, **extra})


def test_step_needs_set_timesteps_and_rng():
    s = create_scheduler("euler_a", SD15)
    with pytest.raises(RuntimeError):
        s.step(FIXED, np.float32(999.0), FIXED, TorchRNG(0))
    s.set_timesteps(5)
    with pytest.raises(ValueError):
        s.step(FIXED, s.timesteps[0], FIXED, None)
    e = create_scheduler("euler", SD15)
    e.set_timesteps(5)
    with pytest.raises(ValueError):
        e.step(FIXED, 3, FIXED, None)  # an index, not a timestep


def test_sd_pipeline_fixups():
    """StableDiffusion(Img2Img)Pipeline.__init__ forces steps_offset=1 and clip_sample=False."""
    cfg = {**{k: v for k, v in SD15.items() if k != "clip_sample"}, "steps_offset": 0}
    plain = create_scheduler("ddim", cfg)
    assert plain.config["clip_sample"] is True and plain.config["steps_offset"] == 0
    fixed = create_scheduler("ddim", cfg, sd_pipeline=True)
    assert fixed.config["clip_sample"] is False and fixed.config["steps_offset"] == 1
    theirs = diffusers.DDIMScheduler.from_config({**cfg, "clip_sample": False, "steps_offset": 1})
    fixed.set_timesteps(10)
    theirs.set_timesteps(10)
    np.testing.assert_array_equal(fixed.timesteps, theirs.timesteps.numpy())
    noise = TorchRNG(4).randn(SHAPE) * np.float32(3.0)  # large enough that clipping would matter
    run_loop(fixed, theirs, noise, noise.copy(), fixed.timesteps, theirs.timesteps, seed=4)
    euler = create_scheduler(None, {**cfg, "_class_name": "EulerDiscreteScheduler"}, sd_pipeline=True)
    assert euler.config["steps_offset"] == 1 and "clip_sample" not in euler.config
