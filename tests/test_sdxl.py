"""SDXL against diffusers' StableDiffusionXL(Img2Img|Inpaint)Pipeline: `sdcli generate --rng torch
--precision f32` on tiny random-weight SDXL models (two text encoders, text_embeds and
time_ids), max pixel difference <= 2 of 255 (tests/reference.py). The base, the zero-SNR
v-prediction model and the refiner are conftest's session fixtures (test_refiner.py and
test_guidance_rescale.py use them too)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.models import build_tiny_sdxl
from tests.reference import SCHEDULERS, compare, diffusers_pixels, sdcli_pixels

STEPS = 10
SEED = 1234
WIDE, SQUARE = (96, 64), (64, 64)


@pytest.fixture(scope="module")
def sdxl_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sdxl-models")


@pytest.fixture(scope="module")
def tiny_sdxl_inpaint(sdxl_root):
    return build_tiny_sdxl(sdxl_root, "tiny-sdxl-inpaint", seed=3, in_channels=9)


def both(model, tmp_path, scheduler, *extra, pipeline_config=None, mask_blur=None, **arguments):
    """(ours, diffusers') pictures of the same request (`extra`, `mask_blur`: sdcli's only)."""
    theirs = diffusers_pixels(model.components(), scheduler, xl=True, pipeline_config=pipeline_config, **arguments)
    ours = sdcli_pixels(model.ov_dir, tmp_path / "out.png", *extra, scheduler=scheduler, mask_blur=mask_blur,
                        **arguments)
    return ours, theirs


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_txt2img_matches_diffusers_for_every_scheduler(tiny_sdxl, scheduler, tmp_path, parity_log):
    ours, theirs = both(tiny_sdxl, tmp_path, scheduler, width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler=scheduler, mode="txt2img", size="64x64")


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m", "euler_a"])
def test_non_square_txt2img_matches_diffusers(tiny_sdxl, scheduler, tmp_path, parity_log):
    """time_ids carry (height, width): a non-square size tells a swap."""
    ours, theirs = both(tiny_sdxl, tmp_path, scheduler, width=96, height=64)
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler=scheduler, mode="txt2img", size="96x64")


def test_empty_negative_prompt_is_zeros_as_diffusers_without_one(tiny_sdxl, tmp_path, parity_log):
    """force_zeros_for_empty_prompt: diffusers called with no negative_prompt; sdcli without --negative-prompt."""
    ours, theirs = both(tiny_sdxl, tmp_path, "euler", negative=None, width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler="euler", mode="txt2img, no negative", size="64x64")
    with_blurry = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "neg.png", scheduler="euler", width=64, height=64)
    assert np.abs(with_blurry - ours).max() > 10  # the zeros are not the encoding of a negative prompt


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_img2img_matches_diffusers(tiny_sdxl, scheduler, strength, init_image_file, tmp_path, parity_log):
    ours, theirs = both(tiny_sdxl, tmp_path, scheduler, init_image=init_image_file, strength=strength)
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler=scheduler, mode=f"img2img {strength}", size="96x64")


INPAINT_CASES = [("euler", 0.6, WIDE), ("ddim", 1.0, SQUARE), ("euler_a", 0.75, WIDE)]


@pytest.mark.parametrize("scheduler,strength,size", INPAINT_CASES)
def test_inpainting_with_the_base_unet_matches_diffusers(tiny_sdxl, inpaint_files, scheduler, strength, size,
                                                          tmp_path, parity_log):
    init_path, mask_path = inpaint_files[size]
    ours, theirs = both(tiny_sdxl, tmp_path, scheduler, init_image=init_path, mask=mask_path, strength=strength,
                        width=size[0], height=size[1], mask_blur=0)
    compare(ours, theirs, parity_log, model="sdxl inpaint 4ch", scheduler=scheduler, mode=f"inpaint {strength}",
            size=f"{size[0]}x{size[1]}")


@pytest.mark.parametrize("scheduler,strength,size", INPAINT_CASES)
def test_inpainting_unet_matches_diffusers(tiny_sdxl_inpaint, inpaint_files, scheduler, strength, size, tmp_path,
                                           parity_log):
    init_path, mask_path = inpaint_files[size]
    ours, theirs = both(tiny_sdxl_inpaint, tmp_path, scheduler, init_image=init_path, mask=mask_path,
                        strength=strength, width=size[0], height=size[1], mask_blur=0)
    compare(ours, theirs, parity_log, model="sdxl inpaint 9ch", scheduler=scheduler, mode=f"inpaint {strength}",
            size=f"{size[0]}x{size[1]}")


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp_2m", "euler_a"])
def test_zero_snr_v_prediction_matches_diffusers(tiny_sdxl_vpred, scheduler, init_image_file, tmp_path, parity_log):
    ours, theirs = both(tiny_sdxl_vpred, tmp_path, scheduler, width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl v zero-snr", scheduler=scheduler, mode="txt2img", size="64x64")
    ours, theirs = both(tiny_sdxl_vpred, tmp_path, scheduler, init_image=init_image_file, strength=0.6)
    compare(ours, theirs, parity_log, model="sdxl v zero-snr", scheduler=scheduler, mode="img2img 0.6", size="96x64")


@pytest.mark.parametrize("steps", [1, 2])
def test_turbo_style_run_matches_diffusers(tiny_sdxl, steps, sdxl_root, tmp_path, parity_log):
    """SDXL-Turbo's recipe: Euler Ancestral with trailing spacing, 1-2 steps, no guidance (a
    folder converted with that scheduler; diffusers given the same)."""
    from sdcli.convert.export import ConvertOptions, convert

    folder = sdxl_root / "turbo-ov"
    if not folder.exists():
        convert(str(tiny_sdxl.diffusers_dir), folder, ConvertOptions(weight_format="fp32", scheduler="euler_a",
                                                                     timestep_spacing="trailing"), log=lambda s: None)
    import diffusers

    components = dict(tiny_sdxl.components())
    components["scheduler"] = diffusers.EulerAncestralDiscreteScheduler.from_config(
        components["scheduler"].config, timestep_spacing="trailing")
    theirs = diffusers_pixels(components, None, xl=True, steps=steps, guidance=0.0, width=64, height=64)
    ours = sdcli_pixels(folder, tmp_path / "out.png", "--guidance-scale", "0", steps=steps, width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl turbo-style", scheduler="euler_a trailing", mode=f"{steps} step",
            size="64x64")


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m"])
def test_refiner_img2img_matches_diffusers(tiny_sdxl_refiner, scheduler, init_image_file, tmp_path, parity_log):
    """The refiner: text_encoder_2 only, time_ids with aesthetic scores (6.0 and 2.5 by default)."""
    config = {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
    ours, theirs = both(tiny_sdxl_refiner, tmp_path, scheduler, init_image=init_image_file, strength=0.6,
                        pipeline_config=config)
    compare(ours, theirs, parity_log, model="sdxl refiner", scheduler=scheduler, mode="img2img 0.6", size="96x64")


def test_micro_conditioning_flags_match_diffusers(tiny_sdxl, tmp_path, parity_log):
    extra = ["--original-size", "128x96", "--crop-coords", "8,16", "--target-size", "64x48"]
    theirs = diffusers_pixels(tiny_sdxl.components(), "euler", xl=True, width=64, height=64,
                              original_size=(96, 128), crops_coords_top_left=(16, 8), target_size=(48, 64))
    ours = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "out.png", *extra, scheduler="euler", width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl eps", scheduler="euler", mode="txt2img, micro-conditioning",
            size="64x64")
    plain = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "plain.png", scheduler="euler", width=64, height=64)
    assert np.abs(plain - ours).max() > 5


def test_openvino_genai_runs_our_sdxl_folder_with_the_same_pixels(tiny_sdxl):
    ov_genai = pytest.importorskip("openvino_genai", reason="openvino-genai is in the dev extras")
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest
    from tests.reference import same_noise

    pipe = ov_genai.Text2ImagePipeline(str(tiny_sdxl.ov_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    theirs = pipe.generate("a red fox", negative_prompt="rain", width=64, height=64, num_inference_steps=5,
                           guidance_scale=7.5, generator=same_noise(5)).data[0].astype(np.int16)
    engine = Engine(tiny_sdxl.ov_dir, precision="f32")
    ours = engine.generate(GenerationRequest(prompt="a red fox", negative_prompt="rain", steps=5, seed=5,
                                             width=64, height=64)).image.astype(np.int16)
    compare(ours, theirs, None)


def test_openvino_genai_on_a_non_square_size_differs_only_by_its_time_ids_order(tiny_sdxl):
    """openvino-genai's SDXL pipeline builds time_ids as (width, height, 0, 0, width, height)
    where diffusers (and sdcli) use (height, width, ...): on a non-square size its picture is
    ours with original and target sizes given swapped (measured: 85 of 255 apart as they are,
    1 with the sizes swapped)."""
    ov_genai = pytest.importorskip("openvino_genai", reason="openvino-genai is in the dev extras")
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest
    from tests.reference import same_noise

    width, height = 96, 64
    pipe = ov_genai.Text2ImagePipeline(str(tiny_sdxl.ov_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    theirs = pipe.generate("a red fox", negative_prompt="rain", width=width, height=height, num_inference_steps=5,
                           guidance_scale=7.5, generator=same_noise(5)).data[0].astype(np.int16)
    engine = Engine(tiny_sdxl.ov_dir, precision="f32")
    request = GenerationRequest(prompt="a red fox", negative_prompt="rain", steps=5, seed=5, width=width, height=height)
    ours = engine.generate(request).image.astype(np.int16)
    swapped = engine.generate(request.replace(original_size=(height, width), target_size=(height, width)))
    compare(swapped.image.astype(np.int16), theirs, None)
    assert np.abs(ours - theirs).max() > 10  # were genai to change its order, the note above goes


OPTIMUM_TINY_SDXL = Path(__file__).parent / "data" / "optimum-tiny-sdxl"


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m"])
def test_folder_exported_by_optimum_cli_matches_diffusers(tiny_sdxl, scheduler, tmp_path, parity_log):
    """tests/data/optimum-tiny-sdxl was written by `optimum-cli export openvino --task text-to-image
    --weight-format fp32` (optimum-intel 2.2.0) from the tiny_sdxl fixture's weights (seed 0).
    Its UNet takes 77 text tokens and its VAE carries ACTIVATIONS_SCALE_FACTOR."""
    theirs = diffusers_pixels(tiny_sdxl.components(), scheduler, xl=True, width=64, height=64)
    ours = sdcli_pixels(OPTIMUM_TINY_SDXL, tmp_path / "out.png", scheduler=scheduler, width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl optimum-cli", scheduler=scheduler, mode="txt2img", size="64x64")


def test_vae_that_overflows_float16_is_compiled_at_f32(tiny_sdxl):
    """SDXL's VAE config says force_upcast: with --precision f16 its decoder and encoder are
    compiled at f32 (the UNet stays at f16); bf16 keeps float32's range and is left alone."""
    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import UNet, VaeDecoder, vae_precision
    from sdcli.runtime.core import Runtime, precision_name

    folder = ModelFolder.open(tiny_sdxl.ov_dir)
    half = Runtime("CPU", "f16", None)
    assert vae_precision(half, folder, "vae_decoder") == "f32"
    assert vae_precision(half, folder, "vae_encoder") == "f32"
    assert vae_precision(Runtime("CPU", "bf16", None), folder, "vae_decoder") is None
    decoder = VaeDecoder(half, folder, (8, 8))
    assert precision_name(decoder.compiled.get_property("INFERENCE_PRECISION_HINT")) == "f32"
    shapes = UNet.input_shapes(folder, 1, (8, 8), 77, {"text_embeds": (1, 32), "time_ids": (1, 6)})
    unet = UNet(half, folder, shapes)
    # the UNet keeps what f16 gives on this CPU (f16 where it has it; OpenVINO falls back otherwise)
    assert precision_name(unet.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f16", "bf16", "f32")


def test_long_prompts_are_chunked_on_both_encoders(tiny_sdxl):
    """A prompt longer than 75 tokens becomes 77-token chunks on each encoder, side by side, the
    negative prompt padded to as many; the pooled embedding is the prompt's first chunk's (A1111's
    rule), and emphasis weighs both encoders' tokens."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    engine = Engine(tiny_sdxl.ov_dir, precision="f32", cache_dir=None)
    long_prompt = GenerationRequest(prompt=" ".join(["red fox"] * 40), negative_prompt="rain", width=64, height=64)
    chunks, _ = engine.family.prompt_chunks(long_prompt, True, "text_encoder_2")
    assert len(chunks[1]) >= 2 and len(chunks[0]) == len(chunks[1])  # the negative padded to as many chunks
    conditioning, _, _ = engine.encode_prompt(long_prompt, True)
    assert conditioning.hidden_states.shape == (2, 77 * len(chunks[1]), 64)
    encoder = engine.components.text_encoder(77, 1, "text_encoder_2")
    encoder(np.asarray([chunks[1][0].ids], dtype=np.int64))
    assert np.allclose(conditioning.unet_inputs["text_embeds"][1], encoder.pooled()[0], atol=1e-5)
    short = long_prompt.replace(prompt="red fox")
    weighted, _, _ = engine.encode_prompt(short.replace(prompt="(red:1.5) fox"), True)
    plain, _, _ = engine.encode_prompt(short, True)
    changed = np.abs(weighted.hidden_states[1] - plain.hidden_states[1]).max(axis=0)
    assert changed[:32].max() > 1e-3 and changed[32:].max() > 1e-3  # both encoders' halves weighted
    assert engine.generate(long_prompt.replace(steps=2, seed=1)).image.shape == (64, 64, 3)
