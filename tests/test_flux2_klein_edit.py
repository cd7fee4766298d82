"""FLUX.2-klein editing: `sdcli generate --reference-image ... --rng torch --precision f32` on the
tiny random FLUX.2-klein gives diffusers' Flux2KleinPipeline(image=[...]) pixels (max difference
<= 2 of 255) with one reference (64x48 output) and with two (the output takes the first one's
size); the references are of other sizes than the output, so that the pipeline's resize and crop
are exercised.  A reference moves the picture by more than the tolerance (against none, and
against another reference); the second of two moves it too.  What cannot be done is refused in
one line, exit 2, nothing written.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.models import smooth_picture
from tests.reference import compare, sdcli_pixels

PROMPT = "turn the sky red"
SEED = 1234
WIDTH, HEIGHT = 64, 48
TOLERANCE = 2


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Two RGB PNGs: A 100x70 (centre-cropped to 100x68) and B 70x90 (to 68x88)."""
    from sdcli.imaging.image_io import save_png

    folder = tmp_path_factory.mktemp("klein-references")
    a, b = folder / "ref-a.png", folder / "ref-b.png"
    save_png(a, smooth_picture(100, 70))
    save_png(b, np.ascontiguousarray(255 - smooth_picture(70, 90)[::-1, ::-1]))
    return a, b


def diffusers_pixels(pipe, images, *, size: bool = True) -> np.ndarray:
    import torch
    from PIL import Image

    extra = {"height": HEIGHT, "width": WIDTH} if size else {}
    out = pipe(prompt=PROMPT, image=[Image.open(path) for path in images], num_inference_steps=4,
               guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
               **extra).images
    return (out[0] * 255).round().astype(np.int16)


def ours(folder, out, images, *flags, size: bool = True) -> np.ndarray:
    extra = [arg for path in images for arg in ("--reference-image", str(path))] + list(flags)
    return sdcli_pixels(folder, out, *extra, prompt=PROMPT, steps=None, negative=None,
                        width=WIDTH if size else None, height=HEIGHT if size else None, seed=SEED)


def moved(a: np.ndarray, b: np.ndarray, parity_log, what: str) -> int:
    diff = np.abs(a - b)
    parity_log.append({"model": "flux2-klein", "scheduler": "flow_euler", "mode": what, "size": f"{a.shape[1]}x"
                       f"{a.shape[0]}", "max": int(diff.max()), "mean": float(diff.mean())})
    return int(diff.max())


@pytest.fixture(scope="module")
def edited(tiny_klein, references, tmp_path_factory):
    """sdcli's picture with reference A at 64x48, and its PNG."""
    out = tmp_path_factory.mktemp("klein-edited") / "a.png"
    return ours(tiny_klein[1], out, [references[0]]), out


def test_one_reference_matches_diffusers_and_moves_the_picture(tiny_klein, references, edited, tmp_path,
                                                                parity_log):
    from sdcli.imaging.image_io import read_png_text

    _, folder, pipe = tiny_klein
    a, b = references
    edited, png = edited
    compare(edited, diffusers_pixels(pipe, [a]), parity_log, model="flux2-klein", scheduler="flow_euler",
            mode="1 reference 100x70", size=f"{WIDTH}x{HEIGHT}")
    assert "Reference images: ref-a.png," in read_png_text(png)["parameters"]
    plain = ours(folder, tmp_path / "none.png", [])
    assert moved(edited, plain, parity_log, "reference vs none") > TOLERANCE
    other = ours(folder, tmp_path / "b.png", [b])
    assert moved(edited, other, parity_log, "reference A vs B") > TOLERANCE


def test_two_references_match_diffusers_at_the_first_one_s_size(tiny_klein, references, tmp_path, parity_log):
    _, folder, pipe = tiny_klein
    a, b = references
    both = ours(folder, tmp_path / "ba.png", [b, a], size=False)
    assert both.shape == (88, 68, 3)  # B, 70x90, cut to multiples of 4 (the tiny VAE's factor 2, 2x2 patches)
    compare(both, diffusers_pixels(pipe, [b, a], size=False), parity_log, model="flux2-klein",
            scheduler="flow_euler", mode="2 references", size="68x88")
    # the second reference counts
    assert moved(both, ours(folder, tmp_path / "b.png", [b], size=False), parity_log, "2nd reference") > TOLERANCE


def test_base_klein_with_guidance_and_a_reference_matches_diffusers(tiny_klein_base, references, tmp_path,
                                                                   parity_log):
    """A Base klein (is_distilled false) guides at 4 with the empty negative: both rows get the
    reference tokens (the pipeline's negative call takes the same image latents)."""
    import torch
    from PIL import Image

    base, base_pipe = tiny_klein_base
    theirs = base_pipe(prompt=PROMPT, image=[Image.open(references[0])], height=HEIGHT, width=WIDTH,
                       num_inference_steps=4, guidance_scale=4.0, generator=torch.Generator("cpu").manual_seed(SEED),
                       output_type="np").images
    guided = ours(base, tmp_path / "g.png", [references[0]], "--guidance-scale", "4")
    compare(guided, (theirs[0] * 255).round().astype(np.int16), parity_log, model="flux2-klein base",
            scheduler="flow_euler", mode="guidance 4, 1 reference", size=f"{WIDTH}x{HEIGHT}")
    plain = ours(base, tmp_path / "p.png", [], "--guidance-scale", "4")
    assert moved(guided, plain, parity_log, "base: reference vs none") > TOLERANCE


def test_from_image_redoes_it_with_the_references_given_again(tiny_klein, references, edited, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.imaging.image_io import read_rgb

    out = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_klein[1]), "--from-image", str(edited[1]),
                                      "--reference-image", str(references[0]), "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert int(np.abs(read_rgb(out).astype(np.int16) - edited[0]).max()) == 0


def test_serve_img2img_takes_init_images_as_references(tiny_klein, references, edited, tmp_path):
    """A1111's img2img route on a klein model: its init_images are the reference images (klein has
    no strength); the picture is generate's with --reference-image."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import base64
    import json

    from fastapi.testclient import TestClient

    from sdcli.imaging.image_io import encode_png, read_rgb
    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker

    folder = tiny_klein[1]
    worker = Worker(ModelRegistry(None, folder), folder.name, queue_size=2, precision="f32")
    worker.start()
    try:
        picture = base64.b64encode(encode_png(read_rgb(references[0]))).decode()
        r = TestClient(create_app(worker)).post("/sdapi/v1/img2img", json={
            "prompt": PROMPT, "init_images": [picture], "seed": SEED, "width": WIDTH, "height": HEIGHT})
        assert r.status_code == 200, r.text
        assert "Reference images: init_images[0]" in json.loads(r.json()["info"])["infotexts"][0]
        (tmp_path / "served.png").write_bytes(base64.b64decode(r.json()["images"][0]))
        served = read_rgb(tmp_path / "served.png").astype(np.int16)
    finally:
        worker.stop()
        worker.join(30)
    assert int(np.abs(served - edited[0]).max()) == 0


@pytest.mark.parametrize("width,height", [(100, 70), (70, 90), (1200, 1000)])
def test_reference_pixels_are_the_pipeline_s(width, height):
    """references.py's sizing and crop give Flux2KleinPipeline's preprocessed image exactly (1200x1000:
    scaled to 1024x1024 in area first), multiples of 16 as on the real models (VAE factor 8)."""
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
    from PIL import Image

    from sdcli.engine.references import reference_pixels

    rng = np.random.default_rng(width)
    image = np.clip(smooth_picture(width, height).astype(np.int16) + rng.integers(-40, 40, (height, width, 3)),
                    0, 255).astype(np.uint8)
    processor = Flux2ImageProcessor(vae_scale_factor=16)
    picture = Image.fromarray(image)  # as Flux2KleinPipeline.__call__ prepares image=[picture]
    processor.check_image_input(picture)
    if picture.width * picture.height > 1024 * 1024:
        picture = processor._resize_to_target_area(picture, 1024 * 1024)
    w, h = picture.width // 16 * 16, picture.height // 16 * 16
    theirs = processor.preprocess(picture, height=h, width=w, resize_mode="crop").numpy()
    ours_ = reference_pixels(image, 16)
    assert ours_.shape == theirs.shape
    assert np.abs(ours_ - theirs).max() == 0


def pipeline_image(processor, path, multiple: int):
    """Flux2KleinPipeline.__call__'s preprocessing of one reference image file."""
    from PIL import Image

    picture = Image.open(path)
    processor.check_image_input(picture)
    if picture.width * picture.height > 1024 * 1024:
        picture = processor._resize_to_target_area(picture, 1024 * 1024)
    w, h = picture.width // multiple * multiple, picture.height // multiple * multiple
    return processor.preprocess(picture, height=h, width=w, resize_mode="crop")


def test_reference_tokens_and_positions_are_the_pipeline_s(tiny_klein, references):
    """What the transformer is given for two references (their normalised latent patches after the
    noise's tokens, and their (10 + 10 i, row, column, 0) positions) is prepare_image_latents'."""
    import openvino as ov
    import torch

    from sdcli.engine.families.base import EncodedPrompt
    from sdcli.engine.families.flux2_klein import Flux2Klein
    from sdcli.engine.request import GenerationRequest
    from sdcli.imaging.image_io import read_rgb
    from sdcli.model.folder import ModelFolder

    _, folder, pipe = tiny_klein
    multiple = 2 * pipe.vae_scale_factor
    images = [pipeline_image(pipe.image_processor, path, multiple) for path in references]
    with torch.no_grad():
        latents, ids = pipe.prepare_image_latents(images, 1, torch.Generator("cpu").manual_seed(0), "cpu",
                                                  torch.float32)
    family = Flux2Klein(ModelFolder.open(folder))
    core = ov.Core()

    def encode(pixels):
        compiled = core.compile_model(folder / "vae_encoder" / "openvino_model.xml", "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled(pixels)[0][:, : family.folder.latent_channels], None

    request = GenerationRequest(prompt=PROMPT, width=WIDTH, height=HEIGHT,
                                reference_images=tuple(read_rgb(path) for path in references))
    plain = family.conditioning(EncodedPrompt(np.zeros((1, 512, family.text_width), np.float32)), request,
                                (WIDTH, HEIGHT))
    conditioning = family.condition_on_images(plain, request, encode)
    tokens = conditioning.own["references"]
    assert tokens.shape == tuple(latents.shape) and family.reference_tokens(request) == tokens.shape[1]
    print(f"reference tokens vs prepare_image_latents: max {np.abs(tokens - latents.numpy()).max():.2e} "
          f"(values up to {np.abs(latents.numpy()).max():.2f})")
    assert np.abs(tokens - latents.numpy()).max() < 1e-4 * max(1.0, float(np.abs(latents.numpy()).max()))
    noise_tokens = plain.unet_inputs["img_ids"].shape[1]
    assert np.array_equal(conditioning.unet_inputs["img_ids"][:, noise_tokens:], ids.numpy().astype(np.float32))
    assert np.array_equal(conditioning.unet_inputs["img_ids"][:, :noise_tokens], plain.unet_inputs["img_ids"])


def test_the_vae_encoder_is_diffusers(tiny_klein):
    """vae_encoder/ (optimum-cli's layout) gives the mean of diffusers' encoder's distribution."""
    import openvino as ov
    import torch

    _, folder, pipe = tiny_klein
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32)
    compiled = ov.Core().compile_model(folder / "vae_encoder" / "openvino_model.xml", "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    channels = pipe.vae.config.latent_channels
    ir_mean = compiled(pixels)[0][:, :channels]
    with torch.no_grad():
        mean = pipe.vae.encode(torch.from_numpy(pixels)).latent_dist.mode().numpy()
    assert ir_mean.shape == mean.shape and np.abs(mean).max() > 0.1
    print(f"vae_encoder IR vs diffusers' encoder mean: max {np.abs(ir_mean - mean).max():.2e} "
          f"(values up to {np.abs(mean).max():.2f})")
    assert np.abs(ir_mean - mean).max() < 1e-4


@pytest.mark.parametrize("case", ["not klein", "unreadable", "too small", "init image", "mask", "from image"])
def test_editing_mistakes_are_one_line(tiny_klein, tiny_eps, references, tmp_path, case):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.engine.parameters import parameters_text
    from sdcli.engine.request import GenerationRequest
    from sdcli.imaging.image_io import save_png

    a, _ = references
    folder = tiny_klein[1]
    out = tmp_path / "x.png"
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    small = tmp_path / "small.png"
    save_png(small, smooth_picture(48, 64))
    made = tmp_path / "made.png"
    request = GenerationRequest(prompt=PROMPT, steps=4, guidance_scale=1.0, seed=SEED, width=WIDTH, height=HEIGHT,
                                reference_images=(np.zeros((1, 1, 3), np.uint8),) * 2,
                                reference_names=("ref-a.png", "ref-b.png"))
    result = type("Result", (), {"seed": SEED, "width": WIDTH, "height": HEIGHT, "scheduler": "flow_euler"})()
    save_png(made, smooth_picture(WIDTH, HEIGHT), parameters_text(request, result, "tiny-klein-ov"))
    flags, message = {
        "not klein": (["--model", str(tiny_eps.ov_dir), "--reference-image", str(a)],
                      "--reference-image is for FLUX.2-klein models"),
        "unreadable": (["--reference-image", str(broken)], "--reference-image: cannot read"),
        "too small": (["--reference-image", str(small)], "both sides must be at least 64"),
        "init image": (["--init-image", str(a)], "use --reference-image"),
        "mask": (["--reference-image", str(a), "--mask", str(a)], "takes no mask"),
        "from image": (["--from-image", str(made)], "pass --reference-image for each"),
    }[case]
    args = ["generate", "--model", str(folder), "--prompt", PROMPT, "--width", str(WIDTH), "--height", str(HEIGHT),
            "--seed", "1", "--output", str(out), *flags]
    if case == "from image":
        args = ["generate", "--model", str(folder), "--output", str(out), *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()
