"""What the flow-matching transformers (FLUX.2-klein, Z-Image) say before they run: the memory
estimate counts FLUX.2-klein's reference images' tokens (and a run it refuses says so in one line,
exit 2); A1111 prompt weights, which a language-model text encoder cannot apply, get one warning
line (also with --quiet, as every warning) and the prompt is used as written; and the bad input
the issue lists is one line, exit 2, nothing written.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.models import smooth_picture

PROMPT = "a photo of an astronaut riding a horse"
WEIGHTED = "a photo of an (astronaut:1.3) riding a [horse]"
WIDTH, HEIGHT = 64, 48


def cli(*args, env=None):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


def generate(folder, out, *flags, prompt: str = PROMPT):
    return cli("generate", "--model", folder, "--prompt", prompt, "--width", WIDTH, "--height", HEIGHT, "--seed", 1,
               "--rng", "torch", "--precision", "f32", "--output", out, *flags)


def one_line_exit_2(result, message: str, out) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


@pytest.fixture(scope="module")
def big_reference(tmp_path_factory):
    """A 1024x1024 reference image (1024/16 squared = 4096 tokens on the tiny klein)."""
    from sdcli.imaging.image_io import save_png

    path = tmp_path_factory.mktemp("big-reference") / "big.png"
    save_png(path, smooth_picture(1024, 1024))
    return path


# --- the memory estimate ---------------------------------------------------------------------------


def test_the_memory_estimate_counts_each_reference_image_s_tokens(tiny_klein, big_reference, monkeypatch):
    import sdcli.engine.memory as memory
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest
    from sdcli.imaging.image_io import read_rgb

    monkeypatch.setattr(memory, "available_bytes", lambda: 10**15)
    engine = Engine(tiny_klein[1], precision="f32", cache_dir=False)
    image = read_rgb(big_reference)
    request = GenerationRequest(prompt=PROMPT, steps=4, guidance_scale=1.0, width=WIDTH, height=HEIGHT)
    requests = [request.replace(reference_images=(image,) * n) for n in (0, 1, 2)]
    f = engine.folder.vae_scale_factor
    sizes = [engine.family.attention_size(r, False, (HEIGHT // f, WIDTH // f)) for r in requests]
    per_reference = (1024 // (2 * f)) ** 2
    noise = (HEIGHT // f // 2) * (WIDTH // f // 2)
    assert [tokens for tokens, _ in sizes] == [noise + 512 + n * per_reference for n in (0, 1, 2)]
    denoising = [engine.check_fits(r).stages["denoising"] for r in requests]
    width = sizes[0][1]
    step = int(memory.TRANSFORMER_K * 4 * per_reference * width)  # f32: 4 bytes a value
    assert abs((denoising[1] - denoising[0]) - step) <= 1 and abs((denoising[2] - denoising[1]) - step) <= 1


def test_a_run_the_estimate_refuses_says_so_in_one_line(tiny_klein, big_reference, tmp_path, monkeypatch):
    """Memory enough for the picture without references, not with two: refused before anything loads."""
    import sdcli.engine.memory as memory
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest
    from sdcli.imaging.image_io import read_rgb

    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**15)
    engine = Engine(tiny_klein[1], precision="f32", cache_dir=False)
    request = GenerationRequest(prompt=PROMPT, steps=4, guidance_scale=1.0, width=WIDTH, height=HEIGHT)
    without = engine.check_fits(request).peak
    with_two = engine.check_fits(request.replace(reference_images=(read_rgb(big_reference),) * 2))
    assert with_two.stage == "denoising" and with_two.peak > without
    monkeypatch.setattr(memory, "available_bytes", lambda: (without + with_two.peak) // 2)
    out = tmp_path / "x.png"
    result = generate(tiny_klein[1], out, "--reference-image", big_reference, "--reference-image", big_reference)
    one_line_exit_2(result, "would need about", out)
    assert "(denoising with 2 reference images)" in result.output


# --- A1111 prompt weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["klein", "z-image"])
def test_prompt_weights_get_one_warning_and_the_prompt_is_used_as_written(tiny_klein, tiny_z_image, tmp_path,
                                                                           model):
    """One warning line for the prompt and the negative prompt together (Z-Image with guidance),
    with --quiet too; the picture is --no-emphasis's (where nothing is parsed): the text as written."""
    from sdcli.imaging.image_io import read_rgb

    folder, extra = {"klein": (tiny_klein[1], ["--steps", "2"]),
                     "z-image": (tiny_z_image[1], ["--steps", "2", "--guidance-scale", "2", "--negative-prompt",
                                                   "(blurry:1.2)"])}[model]
    warned = generate(folder, tmp_path / "w.png", *extra, "--quiet", prompt=WEIGHTED)
    assert warned.exit_code == 0, warned.output
    lines = warned.output.strip().splitlines()
    assert len(lines) == 1 and "do not apply" in lines[0] and "used as written" in lines[0], warned.output
    assert lines[0].startswith("sdcli: warning: ")
    if model == "z-image":
        assert "prompt's and the negative prompt's" in lines[0]
    plain = generate(folder, tmp_path / "p.png", *extra, "--quiet", "--no-emphasis", prompt=WEIGHTED)
    assert plain.exit_code == 0 and plain.output.strip() == "", plain.output
    assert int(np.abs(read_rgb(tmp_path / "w.png").astype(np.int16) - read_rgb(tmp_path / "p.png")).max()) == 0


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model,flags,message", [
    ("klein", ["--width", "72"], "must be multiples of 16"),
    ("z-image", ["--height", "56"], "must be multiples of 16"),
    ("klein", ["--reference-image", "BROKEN"], "--reference-image: cannot read"),
    ("klein", ["--scheduler", "dpmpp_2m"], "flow-matching Euler scheduler only"),
    ("z-image", ["--scheduler", "Euler a"], "flow-matching Euler scheduler only"),
    ("klein", ["--deepcache", "3"], "--deepcache is for UNet models"),
    ("z-image", ["--clip-skip", "2"], "--clip-skip is for CLIP text encoders"),
    ("klein", ["--init-image", "INIT"], "FLUX.2-klein has no image-to-image strength"),
    ("z-image", ["--reference-image", "INIT"], "--reference-image is for FLUX.2-klein models"),
], ids=["klein size", "z-image size", "unreadable reference", "klein scheduler", "z-image scheduler",
        "klein deepcache", "z-image clip skip", "klein init image", "z-image reference"])
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_klein, tiny_z_image, tmp_path, monkeypatch, model, flags,
                                                      message):
    from sdcli.imaging.image_io import save_png
    from sdcli.model.folder import ModelFolder

    if "size" in message or "multiples of 16" in message:
        # the tiny VAEs halve the size once (patches of 4 pixels); the real ones' factor is 8
        monkeypatch.setattr(ModelFolder, "vae_scale_factor", property(lambda self: 8))

    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    init = tmp_path / "init.png"
    save_png(init, smooth_picture(WIDTH, HEIGHT))
    flags = [{"BROKEN": broken, "INIT": init}.get(flag, flag) for flag in flags]
    folder = tiny_klein[1] if model == "klein" else tiny_z_image[1]
    out = tmp_path / "x.png"
    args = ["generate", "--model", folder, "--prompt", PROMPT, "--seed", 1, "--output", out]
    if "--width" not in flags and "--height" not in flags:
        args += ["--width", WIDTH, "--height", HEIGHT]
    elif "--width" not in flags:
        args += ["--width", WIDTH]
    else:
        args += ["--height", HEIGHT]
    one_line_exit_2(cli(*args, *flags), message, out)
