"""Z-Image: `sdcli generate --rng torch --precision f32` on sdcli's conversion of a tiny random
Z-Image gives diffusers' ZImagePipeline's pixels (max difference <= 2 of 255), with the folder's
defaults (9 steps, guidance 0) and with guidance and a negative prompt; and what each case
varies (the prompt, the guidance) moves the picture by more than that.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.reference import compare, sdcli_pixels

PROMPT = "a photo of an astronaut riding a horse"
OTHER = "a red house by the sea at night"
NEGATIVE = "blurry, low quality"
SEED = 1234
WIDTH, HEIGHT = 64, 48  # non-square, multiples of 16
TOLERANCE = 2


def diffusers_pixels(pipe, prompt: str, *, steps: int = 9, guidance: float = 0.0, negative: str | None = None):
    import torch

    image = pipe(prompt, negative_prompt=negative, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
                 guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    return (image[0] * 255).round().astype(np.int16)


_PICTURES: dict = {}  # each picture made once (the tests share some)


def ours(folder, out, prompt: str, *extra) -> np.ndarray:
    """sdcli generate with the folder's defaults (no --steps, --guidance-scale, --negative-prompt)."""
    key = (str(folder), prompt, extra)
    if key not in _PICTURES:
        _PICTURES[key] = sdcli_pixels(folder, out, *extra, prompt=prompt, steps=None, negative=None, width=WIDTH,
                                      height=HEIGHT, seed=SEED)
    return _PICTURES[key]


def test_folder_defaults_are_z_image_turbo_s(tiny_z_image):
    from sdcli.model.defaults import read_defaults

    defaults = read_defaults(tiny_z_image[1])
    assert (defaults.steps, defaults.guidance_scale) == (9, 0.0)


def test_txt2img_matches_diffusers_and_the_prompt_moves_it(tiny_z_image, tmp_path, parity_log):
    _, folder, pipe = tiny_z_image
    picture = ours(folder, tmp_path / "a.png", PROMPT)
    compare(picture, diffusers_pixels(pipe, PROMPT), parity_log, model="z-image", scheduler="flow_euler",
            mode="txt2img 9 steps", size=f"{WIDTH}x{HEIGHT}")
    other = ours(folder, tmp_path / "b.png", OTHER)
    moved = int(np.abs(other - picture).max())
    parity_log.append({"model": "z-image", "scheduler": "flow_euler", "mode": "another prompt moves it by",
                       "size": f"{WIDTH}x{HEIGHT}", "max": moved, "mean": float(np.abs(other - picture).mean())})
    assert moved > TOLERANCE


def test_guidance_with_a_negative_prompt_matches_diffusers_and_moves_it(tiny_z_image, tmp_path, parity_log):
    _, folder, pipe = tiny_z_image
    guided = ours(folder, tmp_path / "g.png", PROMPT, "--guidance-scale", "3", "--negative-prompt", NEGATIVE)
    compare(guided, diffusers_pixels(pipe, PROMPT, guidance=3.0, negative=NEGATIVE), parity_log, model="z-image",
            scheduler="flow_euler", mode="guidance 3, negative", size=f"{WIDTH}x{HEIGHT}")
    plain = ours(folder, tmp_path / "p.png", PROMPT)
    assert int(np.abs(guided - plain).max()) > TOLERANCE
    # the negative prompt itself moves it (at the same guidance)
    other = ours(folder, tmp_path / "n.png", PROMPT, "--guidance-scale", "3", "--negative-prompt", OTHER)
    assert int(np.abs(guided - other).max()) > TOLERANCE


def test_the_chat_template_and_ids_are_transformers(tiny_z_image):
    from transformers import AutoTokenizer

    from sdcli.model.tokenizer import ChatTokenizer

    folder = tiny_z_image[1] / "tokenizer"
    ours_, theirs = ChatTokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    for text in (PROMPT, "", "Ünïcode ✓ <think> (word:1.3)"):
        messages = [{"role": "user", "content": text}]
        rendered = ours_.render(messages, add_generation_prompt=True, enable_thinking=True)
        assert rendered == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=True)
        assert ours_.ids(rendered) == theirs(rendered).input_ids
    assert ours_.ids(PROMPT) != ours_.ids(OTHER)


@pytest.mark.parametrize("flags,message", [
    (["--scheduler", "ddim"], "flow-matching Euler scheduler only"),
    (["--clip-skip", "2"], "--clip-skip is for CLIP text encoders"),
    (["--deepcache", "2"], "--deepcache is for UNet models"),
])
def test_what_a_z_image_model_cannot_do_is_one_line(tiny_z_image, tmp_path, flags, message):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_z_image[1]), "--prompt", PROMPT,
                                      "--width", "64", "--height", "48", "--seed", "1", "--output", str(out), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_openvino_genai_s_transformer_on_our_folder_gives_ours(tiny_z_image):
    """openvino-genai's ZImageTransformer2DModel feeds our transformer IR as sdcli's family does
    (512 caption slots, its own masks and positions): the same output for the same caption and
    latents.  (Its whole pipeline differs from diffusers': it renders the chat template with
    thinking off and spaces the sigmas otherwise, so its pictures are not compared.)"""
    genai = pytest.importorskip("openvino_genai")
    if not hasattr(genai, "ZImageTransformer2DModel"):
        pytest.skip("this openvino-genai has no ZImageTransformer2DModel")
    import openvino as ov

    from sdcli.engine.families.base import EncodedPrompt
    from sdcli.engine.families.z_image import ZImage
    from sdcli.model.folder import ModelFolder

    folder = tiny_z_image[1]
    rng = np.random.default_rng(0)
    tokens, width = 45, 32
    caption = np.zeros((1, 512, width), np.float32)
    caption[0, :tokens] = rng.standard_normal((tokens, width))
    latents = rng.standard_normal((1, 16, HEIGHT // 2, WIDTH // 2)).astype(np.float32)
    timestep = np.array([0.3], np.float32)
    transformer = genai.ZImageTransformer2DModel(str(folder / "transformer"))
    transformer.reshape(1, HEIGHT, WIDTH, 512)
    transformer.compile("CPU", INFERENCE_PRECISION_HINT="f32")
    theirs = transformer.step(ov.Tensor(latents), ov.Tensor(timestep), ov.Tensor(caption)).data.copy()

    family = ZImage(ModelFolder.open(folder))
    encoded = EncodedPrompt(caption[:, :64].copy(), extra={"lengths": np.array([tokens])})
    conditioning = family.conditioning(encoded, None, (WIDTH, HEIGHT))
    compiled = ov.Core().compile_model(folder / "transformer" / "openvino_model.xml", "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    ours_ = compiled({"hidden_states": latents, "timestep": timestep, "encoder_hidden_states": encoded.hidden_states,
                      **conditioning.unet_inputs})[0]
    assert np.abs(ours_).max() > 0.1
    assert np.abs(theirs - ours_).max() < 1e-4


# --- image-to-image (ZImageImg2ImgPipeline) --------------------------------------------------

IMG2IMG_STEPS = 4  # strength 0.3 runs 2 of them, 0.6 3, 1.0 all 4 (int(n - n * strength) skipped)


@pytest.fixture(scope="module")
def init_png(tmp_path_factory):
    """A 64x48 init image with content: gradients and noise."""
    from PIL import Image

    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([x * 255 / WIDTH, y * 255 / HEIGHT, (x + y) * 255 / (WIDTH + HEIGHT)], -1)
    image = np.clip(image + np.random.default_rng(7).normal(0, 25, image.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("init") / "init.png"
    Image.fromarray(image).save(path)
    return path


def diffusers_img2img(pipe, init: "Path", strength: float) -> np.ndarray:
    import torch
    from diffusers import ZImageImg2ImgPipeline
    from PIL import Image

    img2img = ZImageImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    image = img2img(PROMPT, image=Image.open(init).convert("RGB"), strength=strength, height=HEIGHT, width=WIDTH,
                    num_inference_steps=IMG2IMG_STEPS, guidance_scale=0.0,
                    generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    return (image[0] * 255).round().astype(np.int16)


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_img2img_matches_diffusers(tiny_z_image, init_png, tmp_path, parity_log, strength):
    _, folder, pipe = tiny_z_image
    picture = ours(folder, tmp_path / "i.png", PROMPT, "--steps", IMG2IMG_STEPS, "--init-image", init_png,
                   "--strength", strength)
    compare(picture, diffusers_img2img(pipe, init_png, strength), parity_log, model="z-image",
            scheduler="flow_euler", mode=f"img2img {strength} ({IMG2IMG_STEPS} steps)", size=f"{WIDTH}x{HEIGHT}")


def test_strength_moves_the_img2img_picture(tiny_z_image, init_png, tmp_path, parity_log):
    folder = tiny_z_image[1]
    low, high = (ours(folder, tmp_path / f"{s}.png", PROMPT, "--steps", IMG2IMG_STEPS, "--init-image", init_png,
                      "--strength", s) for s in (0.3, 0.6))
    moved = int(np.abs(high - low).max())
    parity_log.append({"model": "z-image", "scheduler": "flow_euler", "mode": "img2img strength 0.3 vs 0.6 moves it by",
                       "size": f"{WIDTH}x{HEIGHT}", "max": moved, "mean": float(np.abs(high - low).mean())})
    assert moved > TOLERANCE


# --- cfg_normalization, cfg_truncation ------------------------------------------------------------

GUIDED = ("--guidance-scale", "3", "--negative-prompt", NEGATIVE)


@pytest.mark.parametrize("flag,value,keyword", [("--cfg-normalization", 1.0, "cfg_normalization"),
                                                ("--cfg-truncation", 0.5, "cfg_truncation")])
def test_cfg_options_match_diffusers_and_move_it(tiny_z_image, tmp_path, parity_log, flag, value, keyword):
    import torch

    _, folder, pipe = tiny_z_image
    picture = ours(folder, tmp_path / "c.png", PROMPT, *GUIDED, flag, value)
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=9,
                  guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
                  **{keyword: value}).images
    compare(picture, (theirs[0] * 255).round().astype(np.int16), parity_log, model="z-image", scheduler="flow_euler",
            mode=f"guidance 3, negative, {keyword} {value}", size=f"{WIDTH}x{HEIGHT}")
    guided = ours(folder, tmp_path / "g.png", PROMPT, *GUIDED)
    moved = int(np.abs(picture - guided).max())
    parity_log.append({"model": "z-image", "scheduler": "flow_euler", "mode": f"{keyword} {value} moves it by",
                       "size": f"{WIDTH}x{HEIGHT}", "max": moved, "mean": float(np.abs(picture - guided).mean())})
    assert moved > TOLERANCE


@pytest.mark.parametrize("flag", ["--cfg-normalization", "--cfg-truncation"])
def test_cfg_options_are_refused_on_other_models(tmp_path, flag):
    from pathlib import Path

    from typer.testing import CliRunner

    from sdcli.cli.app import app

    out = tmp_path / "x.png"
    sd = Path(__file__).parent / "data" / "optimum-tiny"
    result = CliRunner().invoke(app, ["generate", "--model", str(sd), "--prompt", PROMPT, "--seed", "1",
                                      "--output", str(out), flag, "0.5"])
    assert result.exit_code == 2, result.output
    assert f"{flag} is for Z-Image models" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


# --- PNG parameters ---------------------------------------------------------------------------------

def test_png_parameters_and_from_image_redo_it_byte_for_byte(tiny_z_image, tmp_path):
    from sdcli.imaging.image_io import read_png_text
    from tests.reference import sdcli_generate

    folder = tiny_z_image[1]
    first = sdcli_generate(folder, tmp_path / "first.png", *GUIDED, "--cfg-truncation", "0.5", prompt=PROMPT,
                           steps=4, negative=None, width=WIDTH, height=HEIGHT, seed=SEED)
    text = read_png_text(first)["parameters"]
    for field in ("Sampler: Euler,", "Schedule type: Simple,", "CFG scale: 3,", "CFG truncation: 0.5,", "Steps: 4,"):
        assert field in text, text
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    again = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(folder), "--from-image", str(first), "--output",
                                      str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == first.read_bytes()


def test_img2img_of_an_odd_size_image_is_cut_as_diffusers_cuts_it(tiny_z_image, init_png, tmp_path, parity_log):
    """No --width/--height: the init image is cut to multiples of twice the VAE's factor (16 on
    the real model, 4 on the tiny one: 70x54 becomes 68x52, where SD's 8 would give 64x48), as
    ZImageImg2ImgPipeline's image processor cuts it."""
    import torch
    from diffusers import ZImageImg2ImgPipeline
    from PIL import Image

    _, folder, pipe = tiny_z_image
    odd = tmp_path / "odd.png"
    Image.open(init_png).convert("RGB").resize((WIDTH + 6, HEIGHT + 6)).save(odd)
    picture = sdcli_pixels(folder, tmp_path / "o.png", "--steps", IMG2IMG_STEPS, prompt=PROMPT, steps=None,
                           negative=None, seed=SEED, init_image=odd, strength=0.6)
    img2img = ZImageImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    assert picture.shape[:2] == img2img.image_processor.get_default_height_width(Image.open(odd)) == (HEIGHT + 4,
                                                                                                    WIDTH + 4)
    # diffusers resizes with PIL's Lanczos, sdcli (for every model) with OpenCV's area filter when it
    # shrinks: up to 3 of 255 apart here; so diffusers gets the image as sdcli resized it
    from sdcli.imaging.image_io import read_rgb, resize

    resized = Image.fromarray(resize(read_rgb(odd), WIDTH + 4, HEIGHT + 4))
    theirs = img2img(PROMPT, image=resized, strength=0.6, num_inference_steps=IMG2IMG_STEPS, guidance_scale=0.0,
                     generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    compare(picture, (theirs[0] * 255).round().astype(np.int16), parity_log, model="z-image", scheduler="flow_euler",
            mode=f"img2img 0.6 of a 70x54 image ({IMG2IMG_STEPS} steps)", size=f"{WIDTH + 4}x{HEIGHT + 4}")


def test_batch_takes_the_cfg_options_for_every_row(tiny_z_image, tmp_path):
    """`sdcli batch --cfg-truncation` gives generate's picture (and the PNG stores the option)."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.imaging.image_io import read_png_text, read_rgb

    folder = tiny_z_image[1]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    result = CliRunner().invoke(app, ["batch", str(prompts), "--output-dir", str(tmp_path / "out"), "--model",
                                      str(folder), *GUIDED, "--cfg-truncation", "0.5", "--steps", "9", "--seed",
                                      str(SEED), "--width", str(WIDTH), "--height", str(HEIGHT), "--rng", "torch",
                                      "--precision", "f32", "--parallel", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    [png] = (tmp_path / "out").glob("*.png")
    assert "CFG truncation: 0.5," in read_png_text(png)["parameters"]
    generated = ours(folder, tmp_path / "c.png", PROMPT, *GUIDED, "--cfg-truncation", 0.5)
    assert int(np.abs(read_rgb(png).astype(np.int16) - generated).max()) == 0
