"""The numpy flow-matching Euler scheduler against diffusers' FlowMatchEulerDiscreteScheduler (torch,
float32): schedules and every step of a loop for each recipe, the pipelines' helpers (FLUX.1
calculate_shift, FLUX.2 compute_empirical_mu, Z-Image default sigmas, Z-Image img2img strength),
stochastic sampling with torch-matching noise, per-token timesteps.

Every comparison also checks that what it varies makes a difference larger than the tolerance, so
none passes because two schedules happen to coincide.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sdcli.schedulers import FLOW_SCHEDULERS, SCHEDULERS, FlowMatchEulerDiscreteScheduler
from sdcli.schedulers.flow_match import (
    beta_ppf,
    calculate_shift,
    compute_empirical_mu,
    flux_default_sigmas,
    img2img_timesteps,
    mu_from_config,
    z_image_default_sigmas,
)
from sdcli.util.rng import TorchRNG
from tests.scheduler_checks import record

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")



def diffusers_function(relpath: str, name: str, class_name: str | None = None):
    """A function (or a class's method) of a diffusers pipeline module, compiled from that module's
    source on its own: importing the pipeline modules would import transformers (seconds)."""
    path = Path(diffusers.__file__).parent / relpath
    body = ast.parse(path.read_text()).body
    if class_name is not None:
        body = next(n.body for n in body if isinstance(n, ast.ClassDef) and n.name == class_name)
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"np": np, "torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


d_calculate_shift = diffusers_function("pipelines/flux/pipeline_flux.py", "calculate_shift")
d_empirical_mu = diffusers_function("pipelines/flux2/pipeline_flux2_klein.py", "compute_empirical_mu")
d_empirical_mu_dev = diffusers_function("pipelines/flux2/pipeline_flux2.py", "compute_empirical_mu")
get_default_z_image_sigmas = diffusers_function("pipelines/z_image/pipeline_z_image.py", "get_default_z_image_sigmas")
z_image_get_timesteps = diffusers_function(
    "pipelines/z_image/pipeline_z_image_img2img.py", "get_timesteps", "ZImageImg2ImgPipeline"
)

TOL = 1e-6  # relative and absolute, on float32 values
STEPS = [1, 4, 9, 28]
SEQ_LENS = [256, 4096]
SHAPE = (2, 16, 8, 8)

DynCfg = {"use_dynamic_shifting": True, "shift": 3.0}  # FLUX.1-dev / FLUX.2 style config

# recipe -> (scheduler config, how set_timesteps is called); the call kinds:
#   "steps": set_timesteps(n)                       the scheduler's own linspace
#   "flux":  set_timesteps(sigmas=linspace(1, 1/n, n), mu=...)  FLUX.1 / FLUX.2 klein pipelines
#   "zimage": set_timesteps(sigmas=torch.linspace(1, 1/n, n).tolist(), mu=...)  Z-Image pipeline
#   "timesteps" / "both": custom timesteps alone / with sigmas
RECIPES = {
    "shift1": ({"shift": 1.0}, "steps"),
    "shift3": ({"shift": 3.0}, "steps"),
    "shift1.15": ({"shift": 1.15}, "steps"),  # a shift float32 cannot hold exactly
    "zimage_shift3": ({"shift": 3.0}, "zimage"),
    "flux_sigmas_shift3": ({"shift": 3.0}, "flux"),
    "dynamic_flux1": (DynCfg, "flux"),  # mu from calculate_shift
    "dynamic_klein": (DynCfg, "klein"),  # mu from compute_empirical_mu
    "dynamic_steps": (DynCfg, "steps_mu"),
    "dynamic_linear": ({**DynCfg, "time_shift_type": "linear"}, "flux"),
    "dynamic_config_keys": (
        {**DynCfg, "base_shift": 0.3, "max_shift": 2.0, "base_image_seq_len": 128, "max_image_seq_len": 8192},
        "flux",
    ),
    "shift_terminal": ({"shift": 3.0, "shift_terminal": 0.1}, "steps"),
    "dynamic_shift_terminal": ({**DynCfg, "shift_terminal": 0.1}, "flux"),  # LTX-Video style
    "karras": ({"shift": 3.0, "use_karras_sigmas": True}, "steps"),
    "karras_flux": ({**DynCfg, "use_karras_sigmas": True}, "flux"),
    "exponential": ({"shift": 3.0, "use_exponential_sigmas": True}, "steps"),
    "beta": ({"shift": 3.0, "use_beta_sigmas": True}, "steps"),
    "beta_flux": ({**DynCfg, "use_beta_sigmas": True}, "flux"),
    "invert": ({"shift": 3.0, "invert_sigmas": True}, "steps"),
    "timesteps": ({"shift": 3.0}, "timesteps"),
    "sigmas_and_timesteps": ({"shift": 3.0}, "both"),
}

# what each recipe is shown to change against (at 9 steps): same call, the thing varied left out
BASELINES = {
    "shift3": "shift1",
    "shift1.15": "shift1",
    "zimage_shift3": "shift3",  # float32 linspace of given sigmas vs the scheduler's own
    "flux_sigmas_shift3": "shift3",
    "dynamic_flux1": "flux_sigmas_shift3",
    "dynamic_klein": "dynamic_flux1",
    "dynamic_steps": "shift3",
    "dynamic_linear": "dynamic_flux1",
    "dynamic_config_keys": "dynamic_flux1",
    "shift_terminal": "shift3",
    "dynamic_shift_terminal": "dynamic_flux1",
    "karras": "shift3",
    "karras_flux": "dynamic_flux1",
    "exponential": "shift3",
    "beta": "shift3",
    "beta_flux": "dynamic_flux1",
    "invert": "shift3",
    "timesteps": "shift3",
    "sigmas_and_timesteps": "shift3",
}


def make_pair(cfg: dict):
    return FlowMatchEulerDiscreteScheduler.from_config(cfg), diffusers.FlowMatchEulerDiscreteScheduler.from_config(cfg)


def set_args(call: str, n: int, seq_len: int, config) -> dict:
    """The keyword arguments a pipeline passes to set_timesteps (diffusers' and ours take the same)."""
    if call == "steps":
        return {"num_inference_steps": n}
    if call == "steps_mu":
        return {"num_inference_steps": n, "mu": calculate_shift(seq_len)}
    if call == "zimage":
        return {"sigmas": z_image_default_sigmas(n), "mu": mu_from_config(config, seq_len)}
    if call == "flux":
        return {"sigmas": flux_default_sigmas(n), "mu": mu_from_config(config, seq_len)}
    if call == "klein":
        return {"sigmas": flux_default_sigmas(n), "mu": compute_empirical_mu(seq_len, n)}
    custom = list(np.linspace(1000.0, 1000.0 / n, n) * 0.9)  # timesteps that are not sigmas * 1000
    if call == "timesteps":
        return {"timesteps": custom}
    return {"sigmas": list(flux_default_sigmas(n)), "timesteps": custom}


def max_diff(ours, theirs) -> float:
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert a.shape == b.shape and a.size > 0
    return float(np.max(np.abs(a - b)))


def close(ours, theirs, key: str) -> None:
    theirs = theirs.numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    record(key, max_diff(ours, theirs))
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=TOL, atol=TOL)


def schedule(recipe: str, n: int, seq_len: int):
    cfg, call = RECIPES[recipe]
    ours, theirs = make_pair(cfg)
    args = set_args(call, n, seq_len, theirs.config)
    ours.set_timesteps(**args)
    theirs.set_timesteps(**args)
    return ours, theirs


def run_loop(ours, theirs, seed: int, key: str, rng=None, generator=None, begin: int = 0, sample=None) -> float:
    """Steps both from the same start with the same random velocities; compares every output; returns
    the smallest change of the sample in one step (to show the steps do something)."""
    data = np.random.default_rng(seed)
    if sample is None:
        sample = data.standard_normal(SHAPE).astype(np.float32)
    x_ours, x_theirs = sample, torch.from_numpy(sample.copy())
    smallest = np.inf
    for i, t in enumerate(theirs.timesteps[begin:]):
        v = data.standard_normal(sample.shape).astype(np.float32)
        assert np.float32(ours.timesteps[begin + i]) == np.float32(t.item())
        new_ours = ours.step(v, ours.timesteps[begin + i], x_ours, rng=rng)
        x_theirs = theirs.step(torch.from_numpy(v), t, x_theirs, generator=generator, return_dict=False)[0]
        assert new_ours.dtype == np.float32 and new_ours.shape == sample.shape
        smallest = min(smallest, float(np.max(np.abs(new_ours - x_ours))))
        x_ours = new_ours
        close(x_ours, x_theirs, f"flow_euler {key} steps")
    return smallest


# --------------------------------------------------------------------------------------------------
# schedules and loops, per recipe
# --------------------------------------------------------------------------------------------------


def recipe_cases():
    for recipe, (_, call) in RECIPES.items():
        seq_lens = SEQ_LENS if call in ("flux", "klein", "zimage", "steps_mu") else [256]
        for n in STEPS:
            if n == 1 and "shift_terminal" in recipe:
                continue  # one step: diffusers divides by 1 - sigma[-1] = 0 (nan schedule)
            for seq_len in seq_lens:
                yield pytest.param(recipe, n, seq_len, id=f"{recipe}-{n}-{seq_len}")


@pytest.mark.parametrize("recipe,n,seq_len", list(recipe_cases()))
def test_recipe_matches_diffusers(recipe, n, seq_len):
    ours, theirs = schedule(recipe, n, seq_len)
    assert len(ours.timesteps) == n and len(ours.sigmas) == n + 1
    assert ours.timesteps.dtype == np.float32 and ours.sigmas.dtype == np.float32
    close(ours.timesteps, theirs.timesteps, f"flow_euler {recipe} timesteps")
    close(ours.sigmas, theirs.sigmas, f"flow_euler {recipe} sigmas")
    ours.set_begin_index(0)
    theirs.set_begin_index(0)
    assert run_loop(ours, theirs, seed=n * 7 + seq_len, key=recipe) > 1e-3


@pytest.mark.parametrize("recipe", list(BASELINES))
def test_recipe_changes_the_schedule(recipe):
    """Each recipe's schedule differs from its baseline's by more than the tolerance."""
    ours, _ = schedule(recipe, 9, 4096)
    base, _ = schedule(BASELINES[recipe], 9, 4096)
    both = np.concatenate([ours.timesteps / 1000, ours.sigmas]), np.concatenate([base.timesteps / 1000, base.sigmas])
    assert max_diff(*both) > 100 * TOL


def test_mu_varies_with_sequence_length_and_steps():
    for mu in (calculate_shift, lambda s: compute_empirical_mu(s, 9)):
        a, _ = make_pair(DynCfg)
        b, _ = make_pair(DynCfg)
        a.set_timesteps(sigmas=flux_default_sigmas(9), mu=mu(256))
        b.set_timesteps(sigmas=flux_default_sigmas(9), mu=mu(4096))
        assert max_diff(a.sigmas, b.sigmas) > 100 * TOL
    assert abs(compute_empirical_mu(1024, 4) - compute_empirical_mu(1024, 28)) > 0.01


def test_the_training_schedule_matches():
    for cfg in ({"shift": 1.0}, {"shift": 3.0}, {"shift": 1.15}, DynCfg):
        ours, theirs = make_pair(cfg)
        close(ours.sigmas, theirs.sigmas, "flow_euler init sigmas")
        close(ours.timesteps, theirs.timesteps, "flow_euler init timesteps")
        assert (ours.sigma_min, ours.sigma_max) == (theirs.sigma_min, theirs.sigma_max)
    assert max_diff(make_pair({"shift": 3.0})[0].sigmas, make_pair({"shift": 1.0})[0].sigmas) > 0.1


# --------------------------------------------------------------------------------------------------
# helpers of the pipelines
# --------------------------------------------------------------------------------------------------


def test_pipeline_helpers_match_diffusers():
    for seq_len in (256, 1024, 4096, 4301, 16384):
        assert calculate_shift(seq_len) == d_calculate_shift(seq_len)
        assert calculate_shift(seq_len, 128, 8192, 0.3, 2.0) == d_calculate_shift(seq_len, 128, 8192, 0.3, 2.0)
        for n in STEPS:
            assert compute_empirical_mu(seq_len, n) == d_empirical_mu(seq_len, n) == d_empirical_mu_dev(seq_len, n)
    for n in STEPS + [50]:
        assert z_image_default_sigmas(n) == get_default_z_image_sigmas(n)
        # the float32 linspace is not float64's (so the two default-sigma paths are both needed)
        if n > 4:
            assert z_image_default_sigmas(n) != list(flux_default_sigmas(n))
    _, theirs = make_pair(RECIPES["dynamic_config_keys"][0])
    assert mu_from_config(theirs.config, 1024) == d_calculate_shift(1024, 128, 8192, 0.3, 2.0)
    assert abs(mu_from_config(theirs.config, 1024) - calculate_shift(1024)) > 0.01


# scheduler_config.json files of the kind FLUX.1-dev and Z-Image ship (written by save_config: private
# keys, and a key this class does not take)
MODEL_JSONS = {
    "flux_like": {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
                  "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                  "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True},
    "z_image_like": {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.36.0.dev0",
                     "num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0,
                     "_use_default_values": ["shift_terminal", "invert_sigmas"], "use_flow_sigmas": False},
}


@pytest.mark.parametrize("name", list(MODEL_JSONS))
def test_from_config_of_a_model_json(name):
    ours, theirs = make_pair(MODEL_JSONS[name])
    for key, value in ours.config.items():
        assert theirs.config[key] == value
    assert ours.config.get("use_flow_sigmas") == theirs.config.get("use_flow_sigmas")
    args = {"sigmas": flux_default_sigmas(4), "mu": mu_from_config(theirs.config, 4096)}
    ours.set_timesteps(**args)
    theirs.set_timesteps(**args)
    close(ours.sigmas, theirs.sigmas, f"flow_euler {name} sigmas")
    run_loop(ours, theirs, seed=4, key=name)


def test_flow_scheduler_is_not_a_unet_scheduler():
    assert FLOW_SCHEDULERS["flow_euler"] is FlowMatchEulerDiscreteScheduler
    assert FlowMatchEulerDiscreteScheduler not in SCHEDULERS.values()


# --------------------------------------------------------------------------------------------------
# stochastic sampling, per-token timesteps, set_shift, config extras, errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SHAPE, (1, 3, 2, 2)], ids=["large", "under16"])
@pytest.mark.parametrize("n", [4, 9])
def test_stochastic_sampling_with_torch_noise(n, shape):
    seed = 1234 + n
    ours, theirs = make_pair({**DynCfg, "stochastic_sampling": True})
    for s in (ours, theirs):
        s.set_timesteps(sigmas=flux_default_sigmas(n), mu=calculate_shift(1024))
    start = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    gen = torch.Generator("cpu").manual_seed(seed)
    run_loop(ours, theirs, seed=3, key="stochastic", rng=TorchRNG(seed), generator=gen, sample=start)

    # the noise matters: another seed, or no noise, gives another result
    def first_step(cfg, rng):
        s = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        s.set_timesteps(sigmas=flux_default_sigmas(n), mu=calculate_shift(1024))
        return s.step(np.ones(shape, np.float32), s.timesteps[0], start, rng=rng)

    stochastic = first_step({**DynCfg, "stochastic_sampling": True}, TorchRNG(seed))
    assert max_diff(stochastic, first_step({**DynCfg, "stochastic_sampling": True}, TorchRNG(seed + 1))) > 0.01
    assert max_diff(stochastic, first_step(DynCfg, None)) > 0.01
    with pytest.raises(ValueError):
        first_step({**DynCfg, "stochastic_sampling": True}, None)


def test_per_token_timesteps():
    n, batch, tokens, channels = 9, 2, 12, 4
    ours, theirs = make_pair({"shift": 3.0})
    for s in (ours, theirs):
        s.set_timesteps(n)
    data = np.random.default_rng(11)
    sample = data.standard_normal((batch, tokens, channels)).astype(np.float32)
    v = data.standard_normal(sample.shape).astype(np.float32)
    # tokens at schedule timesteps and in between (as LTX conditioning does)
    per_token = data.choice(np.concatenate([theirs.timesteps.numpy(), [999.0, 500.0, 123.0]]), (batch, tokens))
    per_token = per_token.astype(np.float32)
    got = ours.step(v, ours.timesteps[0], sample, per_token_timesteps=per_token)
    want = theirs.step(
        torch.from_numpy(v), theirs.timesteps[0], torch.from_numpy(sample),
        per_token_timesteps=torch.from_numpy(per_token), return_dict=False,
    )[0]
    close(got, want, "flow_euler per-token")
    plain = FlowMatchEulerDiscreteScheduler.from_config({"shift": 3.0})
    plain.set_timesteps(n)
    assert max_diff(got, plain.step(v, plain.timesteps[0], sample)) > 0.01


def test_set_shift():
    ours, theirs = make_pair({"shift": 3.0})
    for s in (ours, theirs):
        s.set_shift(2.0)
        s.set_timesteps(9)
    close(ours.sigmas, theirs.sigmas, "flow_euler set_shift sigmas")
    base, _ = make_pair({"shift": 3.0})
    base.set_timesteps(9)
    assert ours.shift == 2.0 and max_diff(ours.sigmas, base.sigmas) > 0.01


def test_sigma_range_keys_of_a_config_reach_the_karras_schedule():
    """diffusers keeps unexpected config keys; its Karras/exponential/beta conversions read sigma_min/max."""
    for kind in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        cfg = {"shift": 3.0, kind: True, "sigma_min": 0.05, "sigma_max": 0.95}
        ours, theirs = make_pair(cfg)
        plain, _ = make_pair({"shift": 3.0, kind: True})
        for s in (ours, theirs, plain):
            s.set_timesteps(9)
        close(ours.sigmas, theirs.sigmas, "flow_euler sigma range")
        assert max_diff(ours.sigmas, plain.sigmas) > 0.01


def test_beta_ppf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    qs = np.concatenate([np.linspace(0, 1, 101), [1e-6, 1e-3, 0.999, 0.99999]])
    worst = max(abs(beta_ppf(q, 0.6, 0.6) - stats.beta.ppf(q, 0.6, 0.6)) for q in qs)
    worst = max(worst, max(abs(beta_ppf(q, 2.0, 0.5) - stats.beta.ppf(q, 2.0, 0.5)) for q in qs))
    record("flow_euler beta_ppf vs scipy", worst)
    assert worst < 1e-13


def test_errors_as_diffusers():
    for cfg, args in [
        (DynCfg, {"num_inference_steps": 4}),  # dynamic shifting without mu
        ({}, {"num_inference_steps": 3, "sigmas": [1.0, 0.5]}),
        ({}, {"sigmas": [1.0, 0.5], "timesteps": [1000.0]}),
    ]:
        ours, theirs = make_pair(cfg)
        with pytest.raises(ValueError):
            theirs.set_timesteps(**args)
        with pytest.raises(ValueError):
            ours.set_timesteps(**args)
    for cfg in ({"use_karras_sigmas": True, "use_beta_sigmas": True}, {"time_shift_type": "cubic"}):
        with pytest.raises(ValueError):
            diffusers.FlowMatchEulerDiscreteScheduler.from_config(cfg)
        with pytest.raises(ValueError):
            FlowMatchEulerDiscreteScheduler.from_config(cfg)
    ours = FlowMatchEulerDiscreteScheduler()
    ours.set_timesteps(4)
    with pytest.raises(ValueError):
        ours.step(np.zeros(SHAPE, np.float32), 1, np.zeros(SHAPE, np.float32))


def test_index_for_timestep_takes_the_second_of_repeats():
    ours, theirs = make_pair({})
    custom = [1000.0, 500.0, 500.0, 250.0]
    for s in (ours, theirs):
        s.set_timesteps(timesteps=custom)
    for t in custom:
        assert ours.index_for_timestep(t) == theirs.index_for_timestep(torch.tensor(t))
    assert ours.index_for_timestep(500.0) == 2


# --------------------------------------------------------------------------------------------------
# img2img: Z-Image's strength handling and scale_noise
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("n", [4, 9, 28])
def test_z_image_img2img(n, strength):
    seq_len, batch, seed = 1024, 2, 77
    ours, theirs = make_pair({"shift": 3.0})
    args = {"sigmas": z_image_default_sigmas(n), "mu": mu_from_config(theirs.config, seq_len)}
    ours.set_timesteps(**args)
    theirs.set_timesteps(**args)
    got_ts, got_n = img2img_timesteps(ours, n, strength)
    want_ts, want_n = z_image_get_timesteps(SimpleNamespace(scheduler=theirs), n, strength, "cpu")
    assert got_n == want_n and ours.begin_index == theirs.begin_index
    close(got_ts, want_ts, "flow_euler img2img timesteps")
    assert (got_n == n) if strength == 1.0 else (1 <= got_n < n)

    # the init latents: randn with the pipeline's generator, then scale_noise at the first timestep
    image_latents = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
    noise = TorchRNG(seed).randn(SHAPE)
    torch_noise = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(seed))
    assert np.array_equal(noise, torch_noise.numpy())
    latents = ours.scale_noise(image_latents, np.repeat(got_ts[:1], batch), noise)
    want = theirs.scale_noise(torch.from_numpy(image_latents), want_ts[:1].repeat(batch), torch_noise)
    close(latents, want, "flow_euler scale_noise")
    assert run_loop(ours, theirs, seed=n, key="img2img", begin=n - got_n, sample=latents) > 1e-3


def test_strength_and_begin_index_matter():
    noised = {}
    for strength in (0.3, 0.6, 1.0):
        s = FlowMatchEulerDiscreteScheduler.from_config({"shift": 3.0})
        s.set_timesteps(sigmas=z_image_default_sigmas(9))
        ts, left = img2img_timesteps(s, 9, strength)
        noised[strength] = (left, s.scale_noise(np.zeros(SHAPE, np.float32), ts[:1], np.ones(SHAPE, np.float32)))
    assert [noised[k][0] for k in (0.3, 0.6, 1.0)] == [3, 6, 9]  # 9 * 0.3 = 2.7: int(6.3) = 6 steps skipped
    assert max_diff(noised[0.3][1], noised[0.6][1]) > 0.01 and max_diff(noised[0.6][1], noised[1.0][1]) > 0.01
    # the begin index, not the timestep given, decides scale_noise's sigma once set
    s = FlowMatchEulerDiscreteScheduler.from_config({"shift": 3.0})
    s.set_timesteps(9)
    at_first = s.scale_noise(np.zeros(SHAPE, np.float32), s.timesteps[:1], np.ones(SHAPE, np.float32))
    s.set_begin_index(4)
    at_begin = s.scale_noise(np.zeros(SHAPE, np.float32), s.timesteps[:1], np.ones(SHAPE, np.float32))
    assert max_diff(at_first, at_begin) > 0.01
    assert np.all(at_begin == s.sigmas[4])
