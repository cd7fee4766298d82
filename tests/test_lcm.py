"""Latent Consistency Models: the numpy LCM scheduler and guidance embedding against diffusers'.

(Model-level parity with diffusers' LCM pipelines and openvino-genai is further down.)
"""
from __future__ import annotations

import numpy as np
import pytest

from sdcli.engine.lcm import guidance_scale_embedding
from sdcli.util.rng import TorchRNG
from sdcli.schedulers import LCMScheduler, create_scheduler
from tests import reference
from tests.models import TinyModel, build_tiny_lcm
from tests.reference import PROMPT, SEED, compare, diffusers_pixels, reference_arguments, same_noise, to_pixels
from tests.scheduler_checks import diffusers_defaults

# LCM_Dreamshaper_v7's scheduler_config.json
LCM_CONFIG = {
    "_class_name": "LCMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def _diffusers_lcm(config):
    import diffusers

    return diffusers.LCMScheduler.from_config(config)


def test_defaults_are_diffusers_defaults():
    import diffusers

    assert LCMScheduler.defaults == diffusers_defaults(diffusers.LCMScheduler)
    assert create_scheduler(None, LCM_CONFIG).config == {
        k: v for k, v in _diffusers_lcm(LCM_CONFIG).config.items() if k in LCMScheduler.defaults
    }


CASES = [
    # (config changes, steps, strength)
    ({}, 4, 1.0),
    ({}, 1, 1.0),
    ({}, 8, 1.0),
    ({}, 4, 0.5),
    ({}, 3, 0.3),
    ({"prediction_type": "v_prediction"}, 4, 1.0),
    ({"prediction_type": "sample", "clip_sample": True}, 4, 1.0),
    ({"original_inference_steps": 100, "timestep_scaling": 5.0}, 6, 0.8),
    ({"set_alpha_to_one": False, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 5, 1.0),
    ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, 4, 1.0),
]


@pytest.mark.parametrize("changes,steps,strength", CASES)
def test_steps_match_diffusers(changes, steps, strength):
    """The latents after every step, from the same model outputs and noise, within 1e-5 relative."""
    import torch

    config = {**LCM_CONFIG, **changes}
    ours = create_scheduler("lcm", config)
    theirs = _diffusers_lcm(config)
    ours.set_timesteps(steps, strength=strength)
    theirs.set_timesteps(steps, strength=strength)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())

    shape = (1, 4, 8, 8)
    data = np.random.default_rng(1)
    sample = data.standard_normal(shape).astype(np.float32)
    ours_x, theirs_x = sample, torch.from_numpy(sample.copy())
    rng, generator = TorchRNG(11), torch.Generator().manual_seed(11)
    worst = 0.0
    for t in ours.timesteps:
        out = data.standard_normal(shape).astype(np.float32)  # stands in for the UNet
        ours_x = ours.step(out, t, ours_x, rng)
        theirs_x = theirs.step(torch.from_numpy(out), torch.tensor(t), theirs_x, generator=generator).prev_sample
        ref = theirs_x.numpy()
        worst = max(worst, float(np.abs(ours_x - ref).max() / np.abs(ref).max()))
        np.testing.assert_allclose(ours_x, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the last step returns the denoised estimate, with no noise drawn after it
    assert ours.step_index == steps
    print(f"lcm {changes} steps={steps} strength={strength}: max relative difference {worst:.2e}")


def test_begin_index_as_the_sd_img2img_pipeline_sets_it():
    """An LCM-LoRA in diffusers' StableDiffusionImg2ImgPipeline cuts the schedule and sets the
    begin index; the last step is still the last of the schedule."""
    import torch

    ours, theirs = create_scheduler("lcm", LCM_CONFIG), _diffusers_lcm(LCM_CONFIG)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    ours.set_begin_index(3)
    theirs.set_begin_index(3)
    x = np.ones((1, 4, 2, 2), np.float32)
    ours_x, theirs_x = x, torch.from_numpy(x)
    rng, generator = TorchRNG(0), torch.Generator().manual_seed(0)
    for t in ours.timesteps[3:]:
        out = np.full_like(x, 0.3)
        ours_x = ours.step(out, t, ours_x, rng)
        theirs_x = theirs.step(torch.from_numpy(out), torch.tensor(t), theirs_x, generator=generator).prev_sample
    np.testing.assert_allclose(ours_x, theirs_x.numpy(), rtol=1e-5)


def test_add_noise_matches_diffusers():
    import torch

    ours, theirs = create_scheduler("lcm", LCM_CONFIG), _diffusers_lcm(LCM_CONFIG)
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
    ref = theirs.add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.tensor([759])).numpy()
    np.testing.assert_allclose(ours.add_noise(x, noise, 759), ref, rtol=1e-6, atol=1e-6)


def test_too_many_steps_for_the_strength_is_an_error():
    ours = create_scheduler("lcm", LCM_CONFIG)
    with pytest.raises(ValueError, match="original_inference_steps x strength"):
        ours.set_timesteps(4, strength=0.06)  # int(50 * 0.06) = 3 timesteps to pick 4 from
    with pytest.raises(ValueError, match="original_inference_steps"):
        ours.set_timesteps(51)


@pytest.mark.parametrize("guidance", [8.0, 1.0, 1.5, 0.0, 10.5])
@pytest.mark.parametrize("dim", [256, 32, 33])
def test_guidance_embedding_matches_diffusers(guidance, dim):
    import torch
    from diffusers import LatentConsistencyModelPipeline

    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, torch.tensor(guidance - 1).repeat(1), embedding_dim=dim).numpy()
    ours = guidance_scale_embedding(guidance - 1, dim)
    assert ours.shape == ref.shape == (1, dim) and ours.dtype == np.float32
    # sin/cos of angles up to 1000 w: one float32 ulp of such an angle is up to 5e-4
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    assert np.mean(ours == ref) > 0.85


# ---------------------------------------------------------------------------------------------------
# tiny random LCM models, converted; `sdcli generate --rng torch --precision f32` against diffusers
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lcm(tmp_path_factory) -> TinyModel:
    return build_tiny_lcm(tmp_path_factory.mktemp("lcm"))


def _lcm_pipe(model, img2img=False):
    import diffusers
    import torch

    pipe = diffusers.LatentConsistencyModelPipeline.from_pretrained(model.diffusers_dir, torch_dtype=torch.float32)
    if img2img:
        pipe = diffusers.LatentConsistencyModelImg2ImgPipeline(**pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdcli_pixels(ov_dir, tmp_path, *extra) -> np.ndarray:
    """No --negative-prompt, and --steps only where `extra` gives one: the LCM defaults."""
    return reference.sdcli_pixels(ov_dir, tmp_path / "out.png", *extra, steps=None, negative=None)


def test_convert_exports_timestep_cond_as_optimum_cli_names_it(tiny_lcm):
    import openvino as ov

    from sdcli.model.folder import ModelFolder

    unet = ov.Core().read_model(tiny_lcm.ov_dir / "unet" / "openvino_model.xml")
    names = [port.get_any_name() for port in unet.inputs]
    assert names == ["sample", "timestep", "encoder_hidden_states", "timestep_cond"]
    assert unet.input("timestep_cond").get_partial_shape()[1] == 256
    folder = ModelFolder.open(tiny_lcm.ov_dir)
    assert folder.is_lcm and folder.time_cond_proj_dim == 256
    assert folder.scheduler_config["_class_name"] == "LCMScheduler"


@pytest.mark.parametrize("width,height", [(64, 64), (96, 64)])
def test_txt2img_matches_latent_consistency_pipeline(tiny_lcm, width, height, tmp_path, parity_log):
    theirs = to_pixels(_lcm_pipe(tiny_lcm)(**reference_arguments(
        steps=4, negative=None, guidance=8.0, width=width, height=height)).images)
    ours = sdcli_pixels(tiny_lcm.ov_dir, tmp_path, "--steps", "4", "--guidance-scale", "8",
                        "--width", str(width), "--height", str(height))
    compare(ours, theirs, parity_log, model="lcm", scheduler="lcm", mode="txt2img", size=f"{width}x{height}")


def test_lcm_defaults_are_the_lcm_pipelines(tiny_lcm, tmp_path, parity_log):
    """No --steps / --guidance-scale / --scheduler: 4 steps at guidance 8.5 with the LCM scheduler."""
    theirs = to_pixels(_lcm_pipe(tiny_lcm)(**reference_arguments(steps=None, negative=None, guidance=None)).images)
    ours = sdcli_pixels(tiny_lcm.ov_dir, tmp_path)
    compare(ours, theirs, parity_log, model="lcm", scheduler="lcm", mode="txt2img default", size="64x64")


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_img2img_matches_latent_consistency_img2img_pipeline(tiny_lcm, strength, init_image_file, tmp_path,
                                                             parity_log):
    theirs = to_pixels(_lcm_pipe(tiny_lcm, img2img=True)(**reference_arguments(
        steps=4, negative=None, guidance=8.0, init_image=init_image_file, strength=strength)).images)
    ours = sdcli_pixels(tiny_lcm.ov_dir, tmp_path, "--steps", "4", "--guidance-scale", "8",
                        "--init-image", str(init_image_file), "--strength", str(strength))
    compare(ours, theirs, parity_log, model="lcm", scheduler="lcm", mode=f"img2img {strength}", size="96x64")


@pytest.mark.parametrize("strength", [0.75, 1.0])
def test_inpainting_with_an_lcm_unet_matches_the_sd_inpaint_pipeline(tiny_lcm, strength, init_image_file, tmp_path,
                                                                    parity_log):
    """diffusers has no LCM inpainting pipeline: StableDiffusionInpaintPipeline runs an LCM UNet
    with the guidance embedding and no classifier-free guidance batch, and so does sdcli."""
    import cv2

    mask = np.zeros((64, 96), np.uint8)
    mask[10:50, 20:70] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    # the LCM components, scheduler included, in StableDiffusionInpaintPipeline
    theirs = diffusers_pixels(_lcm_pipe(tiny_lcm).components, None, steps=4, negative=None, guidance=8.0,
                              init_image=init_image_file, mask=tmp_path / "mask.png", strength=strength,
                              width=96, height=64)
    ours = sdcli_pixels(tiny_lcm.ov_dir, tmp_path, "--guidance-scale", "8", "--init-image", str(init_image_file),
                        "--mask", str(tmp_path / "mask.png"), "--mask-blur", "0", "--strength", str(strength))
    compare(ours, theirs, parity_log, model="lcm", scheduler="lcm", mode=f"inpaint {strength}", size="96x64")


def test_guidance_changes_the_image_and_negative_prompt_is_ignored_with_a_warning(tiny_lcm, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.imaging.image_io import read_rgb

    base = ["generate", "--model", str(tiny_lcm.ov_dir), "--prompt", PROMPT, "--seed", "5", "--precision", "f32"]
    runs = {}
    for name, extra in {"g8": ["-g", "8"], "g2": ["-g", "2"], "neg": ["-g", "8", "-n", "blurry"]}.items():
        result = CliRunner().invoke(app, [*base, *extra, "--output", str(tmp_path / f"{name}.png")])
        assert result.exit_code == 0, result.output
        runs[name] = (read_rgb(tmp_path / f"{name}.png").astype(np.int16), result.output)
    assert np.abs(runs["g8"][0] - runs["g2"][0]).max() > 10  # the embedding reaches the UNet
    assert np.array_equal(runs["g8"][0], runs["neg"][0])
    assert "no negative prompt" in runs["neg"][1] and "no negative prompt" not in runs["g8"][1]


def test_other_schedulers_and_impossible_schedules_are_usage_errors(tiny_lcm, tmp_path, init_image_file):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    base = ["generate", "--model", str(tiny_lcm.ov_dir), "--prompt", PROMPT, "--output", str(tmp_path / "x.png")]
    result = CliRunner().invoke(app, [*base, "--scheduler", "euler"])
    assert result.exit_code == 2 and "lcm only" in result.output
    result = CliRunner().invoke(app, [*base, "--steps", "60"])
    assert result.exit_code == 2 and "original_inference_steps" in result.output
    result = CliRunner().invoke(app, [*base, "--init-image", str(init_image_file), "--strength", "0.05"])
    assert result.exit_code == 2 and "strength" in result.output


def test_openvino_genai_lcm_pipeline_runs_our_folder_with_the_same_pixels(tiny_lcm, parity_log):
    ov_genai = pytest.importorskip("openvino_genai")

    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    pipe = ov_genai.Text2ImagePipeline(str(tiny_lcm.ov_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    theirs = pipe.generate(PROMPT, width=64, height=64, num_inference_steps=4, guidance_scale=8.0,
                           generator=same_noise(SEED)).data[0].astype(np.int16)
    engine = Engine(tiny_lcm.ov_dir, precision="f32")
    ours = engine.generate(GenerationRequest(prompt=PROMPT, steps=4, guidance_scale=8.0, seed=SEED,
                                            width=64, height=64)).image.astype(np.int16)
    compare(ours, theirs, parity_log, model="lcm", scheduler="lcm", mode="genai txt2img", size="64x64")


# ---------------------------------------------------------------------------------------------------
# LCM-LoRA: a LoRA fused into an ordinary model at convert time, run with the lcm scheduler
# ---------------------------------------------------------------------------------------------------

LORA_SCALE = 0.7


def make_random_lora(diffusers_dir, out_dir) -> None:
    """A random LoRA on the tiny model's UNet (attention, feed-forward, resnet convolutions and
    time projections, as LCM-LoRA's) and text encoder, saved as diffusers saves LoRAs."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(diffusers_dir, torch_dtype=torch.float32)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(
        r=4, lora_alpha=4, init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                        "conv1", "conv2", "time_emb_proj"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
    )


@pytest.fixture(scope="module")
def tiny_lora(tiny_eps, tmp_path_factory):
    """tiny_eps with a random LoRA fused in, converted with --scheduler lcm."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    root = tmp_path_factory.mktemp("lora")
    make_random_lora(tiny_eps.diffusers_dir, root / "lora")
    out = root / "tiny-lora-ov"
    result = CliRunner().invoke(app, ["convert", str(tiny_eps.diffusers_dir), "--output", str(out), "--weight-format",
                                      "fp32", "--lora", str(root / "lora" / "pytorch_lora_weights.safetensors"),
                                      "--lora-scale", str(LORA_SCALE), "--scheduler", "lcm", "--quiet"])
    assert result.exit_code == 0, result.output
    model = TinyModel(tiny_eps.diffusers_dir, out, tiny_eps.prediction_type)
    model.lora_dir = root / "lora"
    return model


def _fused_pipe(model, img2img=False):
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model.diffusers_dir, torch_dtype=torch.float32)
    pipe.load_lora_weights(model.lora_dir)
    pipe.fuse_lora(lora_scale=LORA_SCALE)
    pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    if img2img:
        pipe = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lora_convert_writes_lcm_scheduler_and_fused_weights(tiny_lora, tiny_eps):
    import json

    config = json.loads((tiny_lora.ov_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "LCMScheduler" and config["original_inference_steps"] == 50
    assert config["beta_schedule"] == "scaled_linear" and config["steps_offset"] == 1
    # the fused weights differ from the plain model's in both the UNet and the text encoder
    for component in ("unet", "text_encoder"):
        fused = (tiny_lora.ov_dir / component / "openvino_model.bin").read_bytes()
        plain = (tiny_eps.ov_dir / component / "openvino_model.bin").read_bytes()
        assert len(fused) == len(plain) and fused != plain


@pytest.mark.parametrize("guidance,negative", [(1.0, ""), (2.0, "blurry")])
def test_lcm_lora_txt2img_matches_diffusers_with_the_lora_fused(tiny_lora, guidance, negative, tmp_path,
                                                               parity_log):
    """Guidance 1 (the default with the lcm scheduler): one batch-1 UNet call per step; guidance 2:
    an ordinary UNet still runs the classifier-free guidance batch, as in diffusers."""
    theirs = to_pixels(_fused_pipe(tiny_lora)(**reference_arguments(
        steps=4, negative=negative or None, guidance=guidance, width=64, height=64)).images)
    extra = ["--negative-prompt", negative] if negative else []
    if guidance != 1.0:
        extra += ["--guidance-scale", str(guidance)]
    # 4 steps: the default with the lcm scheduler
    ours = sdcli_pixels(tiny_lora.ov_dir, tmp_path, "--width", "64", "--height", "64", *extra)
    compare(ours, theirs, parity_log, model="lcm-lora", scheduler="lcm", mode=f"txt2img g{guidance:g}",
            size="64x64")


def test_lcm_lora_img2img_matches_diffusers_with_the_lora_fused(tiny_lora, init_image_file, tmp_path, parity_log):
    theirs = to_pixels(_fused_pipe(tiny_lora, img2img=True)(**reference_arguments(
        steps=6, negative=None, guidance=1.0, init_image=init_image_file, strength=0.6)).images)
    ours = sdcli_pixels(tiny_lora.ov_dir, tmp_path, "--steps", "6", "--init-image", str(init_image_file),
                        "--strength", "0.6")
    compare(ours, theirs, parity_log, model="lcm-lora", scheduler="lcm", mode="img2img 0.6", size="96x64")


def test_lcm_scheduler_at_generate_time_on_the_plain_lora_folder(tiny_lora, tiny_eps, tmp_path):
    """`generate --scheduler lcm` on a folder converted with --lora but without --scheduler lcm
    gives the same image as the folder whose own scheduler is lcm."""
    from sdcli.convert.export import ConvertOptions, convert

    plain = tmp_path / "lora-pndm-ov"
    convert(str(tiny_eps.diffusers_dir), plain,
            ConvertOptions(weight_format="fp32", lora=str(tiny_lora.lora_dir), lora_scale=LORA_SCALE),
            log=lambda s: None)
    ours = sdcli_pixels(plain, tmp_path, "--scheduler", "lcm", "-W", "64", "-H", "64")
    assert np.array_equal(ours, sdcli_pixels(tiny_lora.ov_dir, tmp_path, "-W", "64", "-H", "64"))


def test_lora_errors(tiny_eps, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    base = ["convert", str(tiny_eps.diffusers_dir), "--output", str(tmp_path / "x")]
    result = CliRunner().invoke(app, [*base, "--lora", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 2 and "--lora" in result.output
    result = CliRunner().invoke(app, [*base, "--scheduler", "nope"])
    assert result.exit_code == 2 and "unknown scheduler" in result.output
    assert not (tmp_path / "x").exists()


def test_batch_uses_the_lcm_defaults_where_the_command_line_gives_none(tiny_lcm, tmp_path):
    import json

    from typer.testing import CliRunner

    from sdcli.cli.app import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "steps": 3}\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(prompts), "--output-dir", str(out), "--model", str(tiny_lcm.ov_dir),
                                      "--width", "64", "--height", "64", "--seed", "1", "--quiet", "--parallel", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["steps"], r["guidance_scale"]) for r in rows] == [(4, 8.5), (3, 8.5)]
    result = CliRunner().invoke(app, ["batch", str(prompts), "--output-dir", str(tmp_path / "o2"), "--model",
                                      str(tiny_lcm.ov_dir), "--width", "64", "--height", "64", "--steps", "2",
                                      "--guidance-scale", "6", "--quiet", "--parallel", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "o2" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["steps"], r["guidance_scale"]) for r in rows] == [(2, 6.0), (3, 6.0)]
