"""The hires fix (engine/hires.py) beyond `sdcli generate` and the A1111 API: `sdcli batch` rows and
its command line, the OpenAI images API's `hires` extension and MCP's generate_image, each giving
generate's picture for the same settings (max 0 of 255); and on Z-Image, whose second pass is
ZImageImg2ImgPipeline on the upscaled picture, against diffusers (max <= 2): ZImagePipeline at
the first size (output_type pil), Pillow's Lanczos to the hires size as sdcli's Lanczos upscaler
resizes, then ZImageImg2ImgPipeline(strength=denoise, num_inference_steps=int(hires_steps / denoise))
with a fresh generator of the seed.  Tiny sizes (32 -> 64), 2 + 2 steps.
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from tests.reference import NEGATIVE, PROMPT, SEED, compare, generate_args

FIRST, STEPS, HIRES_STEPS = 32, 2, 2


def pixels_of(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def cli(*args):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def generate(model, out, *hires, steps=STEPS, negative=NEGATIVE, prompt=PROMPT) -> bytes:
    """`sdcli generate` at FIRST x FIRST with the --hires-* flags: the PNG's bytes."""
    result = cli(*generate_args(model, out, *hires, steps=steps, negative=negative, prompt=prompt, width=FIRST,
                                height=FIRST))
    assert result.exit_code == 0, result.output
    return out.read_bytes()


# -- Z-Image: the second pass is ZImageImg2ImgPipeline on the upscaled picture ------------------------
def diffusers_z_hires(pipe, denoise: float, resize: tuple[int, int] | None = None) -> np.ndarray:
    """ZImagePipeline at FIRST x FIRST, Lanczos to 2x (as sdcli's Lanczos upscaler at scale 2), cut
    about the centre to `resize` where given, then ZImageImg2ImgPipeline with a fresh generator."""
    import torch
    from diffusers import ZImageImg2ImgPipeline
    from PIL import Image

    first = pipe(PROMPT, height=FIRST, width=FIRST, num_inference_steps=STEPS, guidance_scale=0.0,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil").images[0]
    picture = first.resize((2 * FIRST, 2 * FIRST), resample=Image.Resampling.LANCZOS)
    width, height = resize or picture.size
    left, top = (picture.width - width) // 16 * 8, (picture.height - height) // 16 * 8  # whole latent columns/rows
    picture = picture.crop((left, top, left + width, top + height))
    img2img = ZImageImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    image = img2img(PROMPT, image=picture, strength=denoise, height=height, width=width,
                    num_inference_steps=int(HIRES_STEPS / denoise), guidance_scale=0.0,
                    generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    return (image[0] * 255).round().astype(np.int16)


def z_hires(folder, out, denoise: float, *size) -> np.ndarray:
    size = size or ("--hires-scale", 2)
    return pixels_of(generate(folder, out, *size, "--hires-upscaler", "Lanczos", "--hires-steps", HIRES_STEPS,
                              "--hires-denoise", denoise, negative=None))


def test_z_image_hires_matches_diffusers_and_denoise_moves_it(tiny_z_image, tmp_path, parity_log):
    _, folder, pipe = tiny_z_image
    pictures = {}
    for denoise in (0.3, 0.6):
        pictures[denoise] = z_hires(folder, tmp_path / f"z{denoise}.png", denoise)
        assert pictures[denoise].shape == (2 * FIRST, 2 * FIRST, 3)
        compare(pictures[denoise], diffusers_z_hires(pipe, denoise), parity_log, model="z-image",
                scheduler="flow_euler", mode=f"hires Lanczos denoise {denoise}", size="32->64")
    moved = int(np.abs(pictures[0.6] - pictures[0.3]).max())
    parity_log.append({"model": "z-image", "scheduler": "flow_euler", "mode": "hires denoise 0.3 vs 0.6 moves it by",
                       "size": "32->64", "max": moved, "mean": float(np.abs(pictures[0.6] - pictures[0.3]).mean())})
    assert moved > 2


def test_z_image_hires_cut_to_both_sides_matches_diffusers(tiny_z_image, tmp_path, parity_log):
    """--hires-width 64 --hires-height 48 of a 32x32 first pass: upscaled to cover (64x64), then cut
    about the centre to 64x48 (A1111's truncation, in whole latent rows)."""
    _, folder, pipe = tiny_z_image
    ours = z_hires(folder, tmp_path / "cut.png", 0.6, "--hires-width", 64, "--hires-height", 48)
    assert ours.shape == (48, 64, 3)
    compare(ours, diffusers_z_hires(pipe, 0.6, (64, 48)), parity_log, model="z-image", scheduler="flow_euler",
            mode="hires Lanczos cut to 64x48", size="32->64x48")


def test_z_image_refuses_latent_upscalers_and_klein_the_hires_fix_in_one_line(tiny_z_image, tmp_path):
    from types import SimpleNamespace

    from sdcli.engine.hires import HiresFix, check_model
    from sdcli.util.errors import UsageError

    result = cli(*generate_args(tiny_z_image[1], tmp_path / "no.png", "--hires-scale", 2, steps=STEPS, negative=None,
                                width=FIRST, height=FIRST))  # (the default upscaler: Latent)
    assert result.exit_code == 2 and not (tmp_path / "no.png").exists()
    assert "Latent upscalers interpolate Stable Diffusion's latents" in result.output
    assert len(result.output.strip().splitlines()) == 1
    klein = SimpleNamespace(name="flux2-klein", model="FLUX.2-klein", reference_images=True)
    with pytest.raises(UsageError, match="not supported on FLUX.2-klein models: .* denoising strength"):
        check_model(SimpleNamespace(denoiser="transformer"), klein, HiresFix(upscaler="Lanczos"))


# -- sdcli batch: hires_* row fields and --hires-* for every row ---------------------------------------
_GENERATED: dict = {}


def generated(model, tmp_path, *hires) -> tuple[np.ndarray, bytes]:
    """(pixels, PNG) of `sdcli generate` with the --hires-* flags (made once per flags)."""
    key = (str(model), tuple(map(str, hires)))
    if key not in _GENERATED:
        png = generate(model, tmp_path / f"generated-{len(_GENERATED)}.png", *hires)
        _GENERATED[key] = (pixels_of(png), png)
    return _GENERATED[key]


def run_batch(rows_file, out, model, *flags):
    return cli("batch", rows_file, "--output-dir", out, "--model", model, "--negative-prompt", NEGATIVE, "--steps",
               STEPS, "--width", FIRST, "--height", FIRST, "--rng", "torch", "--precision", "f32", "--parallel", 1,
               *flags)


def test_batch_rows_take_the_hires_fix_and_a_changed_setting_redoes_the_row(tiny_eps, tmp_path, parity_log):
    model = tiny_eps.ov_dir
    rows, out = tmp_path / "rows.jsonl", tmp_path / "out"
    rows.write_text("".join(json.dumps({"prompt": PROMPT, "seed": SEED, **row}) + "\n" for row in [
        {"name": "a", "hires_scale": 2, "hires_upscaler": "Latent (nearest-exact)"},
        {"name": "b", "hires_width": 64, "hires_upscaler": "Lanczos", "hires_denoise": 0.6, "hires_cfg": 6},
        {"name": "c"},
        {"name": "bad", "hires_steps": 3},
    ]))
    # the command line's --hires-steps/--hires-denoise are defaults for the rows that ask for the hires fix
    result = run_batch(rows, out, model, "--hires-steps", HIRES_STEPS, "--hires-denoise", 0.5)
    assert result.exit_code == 1, result.output
    assert "hires_steps is for the hires fix" in result.output and "3 done, 1 failed" in result.output
    a, a_png = generated(model, tmp_path, "--hires-scale", 2, "--hires-upscaler", "Latent (nearest-exact)",
                         "--hires-steps", HIRES_STEPS, "--hires-denoise", 0.5)
    b, _ = generated(model, tmp_path, "--hires-width", 64, "--hires-upscaler", "Lanczos", "--hires-steps",
                     HIRES_STEPS, "--hires-denoise", 0.6, "--hires-cfg", 6)
    plain, _ = generated(model, tmp_path)
    for name, theirs in (("a", a), ("b", b), ("c", plain)):
        ours = pixels_of((out / f"{name}.png").read_bytes())
        assert ours.shape == theirs.shape and int(np.abs(ours - theirs).max()) == 0, name
        parity_log.append({"model": "sd15", "scheduler": "pndm", "mode": f"batch row {name} vs generate",
                           "size": f"{ours.shape[1]}x{ours.shape[0]}", "max": 0, "mean": 0.0})
    assert (out / "a.png").read_bytes() == a_png  # the PNG's parameters too
    assert a.shape == (64, 64, 3) and plain.shape == (32, 32, 3)

    rows.write_text("\n".join(rows.read_text().splitlines()[:3]) + "\n")  # (without the bad row)
    again = run_batch(rows, out, model, "--hires-steps", HIRES_STEPS, "--hires-denoise", 0.5)
    assert again.exit_code == 0 and "0 done, 0 failed, 3 skipped" in again.output, again.output
    # a changed command-line denoise redoes row a (b has its own); --hires-scale for every row redoes c
    changed = run_batch(rows, out, model, "--hires-steps", HIRES_STEPS, "--hires-denoise", 0.3, "--hires-scale", 2)
    assert changed.exit_code == 0 and "2 done, 0 failed, 1 skipped" in changed.output, changed.output
    a3, _ = generated(model, tmp_path, "--hires-scale", 2, "--hires-upscaler", "Latent (nearest-exact)",
                      "--hires-steps", HIRES_STEPS, "--hires-denoise", 0.3)
    c3, _ = generated(model, tmp_path, "--hires-scale", 2, "--hires-steps", HIRES_STEPS, "--hires-denoise", 0.3)
    assert int(np.abs(pixels_of((out / "a.png").read_bytes()) - a3).max()) == 0
    assert int(np.abs(pixels_of((out / "c.png").read_bytes()) - c3).max()) == 0
    moved = int(np.abs(a3 - a).max())
    parity_log.append({"model": "sd15", "scheduler": "pndm", "mode": "batch hires denoise 0.3 vs 0.5 moves it by",
                       "size": "32->64", "max": moved, "mean": float(np.abs(a3 - a).mean())})
    assert moved > 2


@pytest.mark.parametrize("flags, message", [
    (("--hires-scale", 2, "--hires-upscaler", "4x-Nothing"), "--hires-upscaler: "),
    (("--hires-scale", 1), "--hires-scale must be more than 1"),
])
def test_batch_command_line_hires_the_model_refuses_stops_the_batch(tiny_eps, tmp_path, flags, message):
    rows, out = tmp_path / "rows.txt", tmp_path / "out"
    rows.write_text(PROMPT + "\n")
    result = run_batch(rows, out, tiny_eps.ov_dir, *flags)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not list(out.glob("*.png"))


# -- the OpenAI images API's `hires` extension and MCP's generate_image ---------------------------------
HIRES = {"scale": 2, "upscaler": "Latent (nearest-exact)", "steps": HIRES_STEPS, "denoise": 0.5}
HIRES_FLAGS = ("--hires-scale", 2, "--hires-upscaler", "Latent (nearest-exact)", "--hires-steps", HIRES_STEPS,
               "--hires-denoise", 0.5)


@pytest.fixture(scope="module")
def worker(tiny_eps):
    pytest.importorskip("fastapi")
    from sdcli.serve.worker import ModelRegistry, Worker

    running = Worker(ModelRegistry(None, tiny_eps.ov_dir), tiny_eps.ov_dir.name, queue_size=4, precision="f32")
    running.start()
    yield running
    running.stop()
    running.join(30)


def test_openai_hires_extension_gives_generate_s_png(tiny_eps, worker, tmp_path, parity_log):
    from fastapi.testclient import TestClient

    from sdcli.serve.app import create_app

    http = TestClient(create_app(worker))
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "size": f"{FIRST}x{FIRST}"}
    r = http.post("/v1/images/generations", json={**body, "hires": HIRES})
    assert r.status_code == 200, r.text
    assert r.json()["size"] == f"{2 * FIRST}x{2 * FIRST}"
    served = base64.b64decode(r.json()["data"][0]["b64_json"])
    theirs, png = generated(tiny_eps.ov_dir, tmp_path, *HIRES_FLAGS)
    parity_log.append({"model": "sd15", "scheduler": "pndm", "mode": "OpenAI hires vs generate", "size": "32->64",
                       "max": int(np.abs(pixels_of(served) - theirs).max()), "mean": 0.0})
    assert served == png  # the same pixels and parameters, byte for byte
    for hires, param in (({"scale": 1}, "hires.scale"), ({"denoise": 0}, "hires.denoise"),
                         ({"upscaler": "4x-Nothing"}, "hires.upscaler"), ({"size": 2}, "hires.size"),
                         ("2x", "hires"), ({"width": 100}, "hires.width")):
        bad = http.post("/v1/images/generations", json={**body, "hires": hires})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, (hires, bad.text)


def test_mcp_generate_image_takes_hires_arguments(tiny_eps, worker, tmp_path):
    import anyio

    from sdcli.serve.mcp_server import build_server

    server = build_server(worker, tmp_path / "mcp")
    arguments = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "width": FIRST,
                 "height": FIRST, "hires_scale": 2, "hires_upscaler": "Latent (nearest-exact)",
                 "hires_steps": HIRES_STEPS, "hires_denoise": 0.5}

    async def call(args):
        from mcp import Client

        async with Client(server) as client:  # (in-process)
            return await client.call_tool("generate_image", args)

    result = anyio.run(call, arguments)
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 1
    _, png = generated(tiny_eps.ov_dir, tmp_path, *HIRES_FLAGS)
    assert base64.b64decode(images[0].data) == png
    assert result.structured_content["images"][0]["width"] == 2 * FIRST
    error = anyio.run(call, {**arguments, "hires_denoise": 0})
    text = " ".join(c.text for c in error.content if c.type == "text")
    assert error.is_error and "hires_denoise must be more than 0" in text and "\n" not in text.strip(), text
