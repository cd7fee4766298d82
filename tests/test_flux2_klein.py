"""FLUX.2-klein: `sdcli generate --rng torch --precision f32` on sdcli's conversion of a tiny random
FLUX.2-klein (distilled) gives diffusers' Flux2KleinPipeline's pixels (max difference <= 2 of 255)
with the folder's defaults (4 steps, guidance 1), on a non-square size; another prompt moves the
picture by more than that; a Base model with guidance 4 matches too, and its guidance moves it.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.reference import compare, sdcli_pixels

PROMPT = "a photo of an astronaut riding a horse"
OTHER = "a red house by the sea at night"
SEED = 1234
WIDTH, HEIGHT = 64, 48  # non-square, multiples of 16
TOLERANCE = 2


def diffusers_pixels(pipe, prompt: str, *, steps: int = 4, guidance: float = 1.0):
    import torch

    image = pipe(prompt=prompt, height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    return (image[0] * 255).round().astype(np.int16)


def ours(folder, out, prompt: str, *extra) -> np.ndarray:
    """sdcli generate with the folder's defaults (no --steps, --guidance-scale)."""
    return sdcli_pixels(folder, out, *extra, prompt=prompt, steps=None, negative=None, width=WIDTH, height=HEIGHT,
                        seed=SEED)


def test_folder_defaults_are_the_distilled_model_s(tiny_klein):
    import json

    from sdcli.model.defaults import read_defaults

    defaults = read_defaults(tiny_klein[1])
    assert (defaults.steps, defaults.guidance_scale) == (4, 1.0)
    config = json.loads((tiny_klein[1] / "text_encoder" / "config.json").read_text())
    assert config["hidden_states_layers"] == [9, 18, 27]
    vae = json.loads((tiny_klein[1] / "vae_decoder" / "config.json").read_text())
    assert len(vae["bn_running_mean_data"]) == 4 * vae["latent_channels"]


def test_txt2img_matches_diffusers_and_the_prompt_moves_it(tiny_klein, tmp_path, parity_log):
    _, folder, pipe = tiny_klein
    picture = ours(folder, tmp_path / "a.png", PROMPT)
    compare(picture, diffusers_pixels(pipe, PROMPT), parity_log, model="flux2-klein", scheduler="flow_euler",
            mode="txt2img 4 steps", size=f"{WIDTH}x{HEIGHT}")
    other = ours(folder, tmp_path / "b.png", OTHER)
    moved = int(np.abs(other - picture).max())
    parity_log.append({"model": "flux2-klein", "scheduler": "flow_euler", "mode": "another prompt moves it by",
                       "size": f"{WIDTH}x{HEIGHT}", "max": moved, "mean": float(np.abs(other - picture).mean())})
    assert moved > TOLERANCE


@pytest.mark.parametrize("flags,message", [
    (["--scheduler", "ddim"], "flow-matching Euler scheduler only"),
    (["--clip-skip", "2"], "--clip-skip is for CLIP text encoders"),
    (["--init-image", "INIT"], "--init-image: FLUX.2-klein has no image-to-image strength"),
])
def test_what_a_klein_model_cannot_do_is_one_line(tiny_klein, tmp_path, flags, message):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.imaging.image_io import save_png

    init = tmp_path / "init.png"
    save_png(init, np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    flags = [str(init) if flag == "INIT" else flag for flag in flags]
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_klein[1]), "--prompt", PROMPT,
                                      "--width", str(WIDTH), "--height", str(HEIGHT), "--seed", "1",
                                      "--output", str(out), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_base_with_guidance_matches_diffusers_and_moves_it(tiny_klein, tiny_klein_base, tmp_path, parity_log):
    """A Base (not distilled) klein guides above 1 with the empty prompt as the negative: the same
    folder with model_index.json's is_distilled false, guidance 4."""
    folder = tiny_klein[1]
    base, base_pipe = tiny_klein_base
    guided = ours(base, tmp_path / "g.png", PROMPT, "--guidance-scale", "4", "--steps", "4")
    compare(guided, diffusers_pixels(base_pipe, PROMPT, guidance=4.0), parity_log, model="flux2-klein base",
            scheduler="flow_euler", mode="guidance 4 (empty negative)", size=f"{WIDTH}x{HEIGHT}")
    # the distilled model ignores the scale; the Base model's guidance moves the picture
    assert int(np.abs(guided - ours(folder, tmp_path / "d.png", PROMPT, "--guidance-scale", "4")).max()) > TOLERANCE


def test_openvino_genai_s_transformer_on_our_folder_gives_ours(tiny_klein):
    """openvino-genai's Flux2Transformer2DModel feeds our transformer IR (512 text slots, float ids
    set as its pipeline sets them) and gives what the IR gives as this family feeds it."""
    genai = pytest.importorskip("openvino_genai")
    if not hasattr(genai, "Flux2Transformer2DModel"):
        pytest.skip("this openvino-genai has no Flux2Transformer2DModel")
    import openvino as ov

    from sdcli.engine.families.base import EncodedPrompt
    from sdcli.engine.families.flux2_klein import Flux2Klein
    from sdcli.model.folder import ModelFolder

    folder = tiny_klein[1]
    rng = np.random.default_rng(0)
    family = Flux2Klein(ModelFolder.open(folder))
    caption = rng.standard_normal((1, 512, family.text_width)).astype(np.float32)
    conditioning = family.conditioning(EncodedPrompt(caption), None, (WIDTH, HEIGHT))
    latents = rng.standard_normal((1, 8, HEIGHT // 2, WIDTH // 2)).astype(np.float32)
    sample, timestep = family.denoiser_inputs(latents, 700.0, conditioning)
    transformer = genai.Flux2Transformer2DModel(str(folder / "transformer"))
    transformer.reshape(1, HEIGHT, WIDTH, 512)
    transformer.compile("CPU", INFERENCE_PRECISION_HINT="f32")
    transformer.set_hidden_states("encoder_hidden_states", ov.Tensor(caption))
    for name in ("txt_ids", "img_ids"):
        transformer.set_hidden_states(name, ov.Tensor(conditioning.unet_inputs[name]))
    theirs = transformer.infer(ov.Tensor(sample), ov.Tensor(np.array([timestep], np.float32))).data.copy()
    compiled = ov.Core().compile_model(folder / "transformer" / "openvino_model.xml", "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    ours_ = compiled({"hidden_states": sample, "timestep": np.array([timestep], np.float32),
                      "encoder_hidden_states": caption, **conditioning.unet_inputs})[0]
    assert np.abs(ours_).max() > 0.1
    assert np.abs(theirs - ours_).max() < 1e-4


def test_openvino_genai_on_our_folder_gives_diffusers_picture(tiny_klein, tmp_path):
    """openvino-genai's Text2ImagePipeline runs our folder end to end and, given the pipeline's
    noise, paints diffusers' picture.  It draws its noise in the unpatchified latent shape
    [1, C, h, w] and cuts it into patches itself (diffusers draws [1, 4C, h/2, w/2] directly): our
    generator hands it torch's draw in the patchified shape, unpatchified."""
    genai = pytest.importorskip("openvino_genai")
    import openvino as ov

    from sdcli.util.rng import TorchRNG

    class PipelineNoise(genai.Generator):
        def __init__(self):
            genai.Generator.__init__(self)
            self.rng = TorchRNG(SEED)

        def next(self):
            raise NotImplementedError

        def randn_tensor(self, shape):
            b, c, h, w = shape
            x = self.rng.randn((b, 4 * c, h // 2, w // 2))
            x = x.reshape(b, c, 2, 2, h // 2, w // 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
            return ov.Tensor(np.ascontiguousarray(x))

    _, folder, pipe = tiny_klein
    try:
        text2image = genai.Text2ImagePipeline(str(folder), "CPU", INFERENCE_PRECISION_HINT="f32")
    except RuntimeError as exc:
        pytest.skip(f"this openvino-genai does not run FLUX.2-klein folders: {str(exc)[:200]}")
    theirs = text2image.generate(PROMPT, width=WIDTH, height=HEIGHT, num_inference_steps=4, guidance_scale=1.0,
                                 generator=PipelineNoise()).data[0].astype(np.int16)
    assert int(np.abs(theirs - diffusers_pixels(pipe, PROMPT)).max()) <= TOLERANCE
