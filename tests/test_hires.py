"""A1111's hires fix (`generate --hires-*`, engine/hires.py) against diffusers: txt2img with
output_type="latent", the latents interpolated by torch as the Latent mode says (or, for Lanczos,
the decoded picture resized by Pillow and encoded with a generator of the seed), then
StableDiffusionImg2ImgPipeline on those latents with num_inference_steps = int(hires_steps /
denoise) and a fresh generator of the seed, run for exactly hires_steps steps; 32x32 -> 64x64,
2 + 2 steps on the tiny models.  Also: each Latent mode's numpy weights against torch's
interpolate, A1111's target sizes, the PNG's fields and --from-image, the refusals."""
from __future__ import annotations

import numpy as np
import pytest

from sdcli.engine.hires import LATENT_MODES, HiresFix, resize_latents, target
from tests.reference import NEGATIVE, PROMPT, SEED, compare, generate_args, sdcli_pixels, to_pixels

FIRST, STEPS = 32, 2
VAE_TILE = 32  # pixels: 16 latents of the tiny VAE (factor 2), so the 64x64 hires picture is 3 x 3 tiles


# -- the upscale and the sizes, without a model ---------------------------------------------------
@pytest.mark.parametrize("name", list(LATENT_MODES))
def test_latent_modes_match_torch_interpolate(name):
    import torch

    mode, antialias = LATENT_MODES[name]
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((4, 4), (8, 8)), ((5, 7), (11, 9)), ((8, 6), (12, 9)), ((16, 16), (24, 40)),
                             ((9, 13), (4, 6)), ((8, 8), (8, 8))]:
        x = rng.standard_normal((1, 4, h, w)).astype(np.float32)
        theirs = torch.nn.functional.interpolate(torch.from_numpy(x), size=(oh, ow), mode=mode,
                                                 antialias=antialias).numpy()
        ours = resize_latents(x, oh, ow, mode, antialias)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5, (name, (h, w), (oh, ow))


def test_the_modes_differ_where_torch_s_do():
    """Pairs of modes give different latents exactly where torch's do (upsampling, bilinear's
    antialias changes nothing, and at 2x nearest is nearest-exact)."""
    import torch

    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    names = list(LATENT_MODES)
    for size in (16, 12):
        ours = {name: resize_latents(x, size, size, *LATENT_MODES[name]) for name in names}
        theirs = {name: torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode=mode,
                                                        antialias=antialias).numpy()
                  for name, (mode, antialias) in LATENT_MODES.items()}
        differing = 0
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                differ = np.abs(ours[a] - ours[b]).max() > 1e-3
                assert differ == (np.abs(theirs[a] - theirs[b]).max() > 1e-3), (size, a, b)
                differing += differ
        assert differing >= 13  # of 15 pairs


def sizes(t) -> tuple:
    return (t.upscale_width, t.upscale_height, t.truncate_x, t.truncate_y, t.width, t.height)


def test_target_sizes_are_a1111_s():
    assert sizes(target(HiresFix(scale=2), 32, 32, 8)) == (64, 64, 0, 0, 64, 64)
    assert sizes(target(HiresFix(scale=1.5), 512, 768, 8))[4:] == (768, 1152)
    # both sides: the first pass scaled to cover them, the latents then cut about the centre
    t = target(HiresFix(resize_width=96, resize_height=96), 64, 32, 8)
    assert (t.upscale_width, t.upscale_height, t.truncate_x, t.truncate_y, t.width, t.height) == (192, 96, 12, 0, 96, 96)
    t = target(HiresFix(resize_width=1024, resize_height=1024), 512, 768, 8)
    assert (t.upscale_width, t.upscale_height, t.truncate_y, t.width, t.height) == (1024, 1536, 64, 1024, 1024)
    assert sizes(target(HiresFix(resize_width=128), 64, 32, 8))[4:] == (128, 64)  # one side: the other follows
    assert HiresFix(steps=2, denoise=0.5).second_pass_steps(20) == (4, 2)
    assert HiresFix(steps=0, denoise=0.7).second_pass_steps(10) == (14, 10)
    assert HiresFix(steps=3, denoise=1.0).second_pass_steps(10) == (3, 3)  # (A1111's 0.999 cap)


def test_pixel_upscalers_are_a1111_s_resize_image():
    """Lanczos and Nearest: the filter by the covering scale, then Lanczos to the target; None:
    Lanczos straight to the target (A1111's resize_image with upscaler "None")."""
    from PIL import Image

    from sdcli.engine.hires import upscale_pixels

    image = (np.random.default_rng(2).random((24, 40, 3)) * 255).astype(np.uint8)
    pil = Image.fromarray(image)
    lanczos, nearest = Image.Resampling.LANCZOS, Image.Resampling.NEAREST
    # 40x24 to 96x56: scale 2.4 (the covering one), int(40 * 2.4) = 96, int(24 * 2.4) = 57, then 96x56
    expected = {"Lanczos": pil.resize((96, 57), resample=lanczos).resize((96, 56), resample=lanczos),
                "Nearest": pil.resize((96, 57), resample=nearest).resize((96, 56), resample=lanczos),
                "None": pil.resize((96, 56), resample=lanczos)}
    for name, picture in expected.items():
        assert np.array_equal(upscale_pixels(image, 96, 56, name), np.asarray(picture)), name
    assert not np.array_equal(np.asarray(expected["Nearest"]), np.asarray(expected["None"]))


# -- against diffusers ------------------------------------------------------------------------------
def diffusers_hires(components: dict, upscaler, size: int, hires_steps: int, denoise: float, xl: bool = False,
                    hires_prompt: str | None = None) -> np.ndarray:
    """`upscaler`: a Latent mode's or Pillow filter's name, or a function of a PIL image and
    the size (a model upscaler's A1111 steps)."""
    import diffusers
    import torch
    from PIL import Image

    kind = "StableDiffusionXL" if xl else "StableDiffusion"
    first = getattr(diffusers, f"{kind}Pipeline")(**components)
    second = getattr(diffusers, f"{kind}Img2ImgPipeline")(**components)
    for pipe in (first, second):
        pipe.set_progress_bar_config(disable=True)
    latents = first(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5, width=FIRST,
                    height=FIRST, generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").images
    factor = first.vae_scale_factor
    if isinstance(upscaler, str) and upscaler in LATENT_MODES:
        mode, antialias = LATENT_MODES[upscaler]
        latents = torch.nn.functional.interpolate(latents, size=(size // factor, size // factor), mode=mode,
                                                  antialias=antialias)
    else:  # the decoded picture resized by Pillow, encoded with a generator of the seed
        vae = first.vae
        with torch.no_grad():
            decoded = vae.decode(latents / vae.config.scaling_factor).sample
        picture = first.image_processor.postprocess(decoded, output_type="pil")[0]
        if callable(upscaler):
            picture = upscaler(picture, size)
        else:
            picture = picture.resize((size, size), resample=getattr(Image.Resampling, upscaler.upper()))
        with torch.no_grad():
            dist = vae.encode(first.image_processor.preprocess(picture)).latent_dist
        latents = dist.sample(torch.Generator("cpu").manual_seed(SEED)) * vae.config.scaling_factor
    total = int(hires_steps / min(denoise, 0.999))
    image = second(prompt=hires_prompt or PROMPT, negative_prompt=NEGATIVE, image=latents,
                   strength=min(1.0, (hires_steps + 0.5) / total), num_inference_steps=total, guidance_scale=7.5,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    return to_pixels(image)


def hires_args(upscaler="Latent", scale=2, steps=2, denoise=0.5, *extra):
    return ("--hires-scale", scale, "--hires-upscaler", upscaler, "--hires-steps", steps, "--hires-denoise", denoise,
            *extra)


def sdcli_hires(model_dir, out, *hires, scheduler=None):
    return sdcli_pixels(model_dir, out, *hires, steps=STEPS, width=FIRST, height=FIRST, scheduler=scheduler)


@pytest.fixture(scope="module")
def sd_components(tiny_eps):
    return dict(tiny_eps.pipe().components)


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Latent (nearest-exact)", "Lanczos"])
def test_hires_matches_diffusers(tiny_eps, sd_components, upscaler, tmp_path, parity_log):
    theirs = diffusers_hires(sd_components, upscaler, 2 * FIRST, 2, 0.5)
    ours = sdcli_hires(tiny_eps.ov_dir, tmp_path / "out.png", *hires_args(upscaler))
    assert ours.shape == (2 * FIRST, 2 * FIRST, 3)
    compare(ours, theirs, parity_log, model="sd15", scheduler="pndm", mode=f"hires {upscaler}", size="32->64")


def test_sd2_vpred_hires_matches_diffusers(tiny_sd2, tmp_path, parity_log):
    theirs = diffusers_hires(dict(tiny_sd2.pipe().components), "Latent (bicubic)", 2 * FIRST, 2, 0.6)
    ours = sdcli_hires(tiny_sd2.ov_dir, tmp_path / "sd2.png", *hires_args("Latent (bicubic)", 2, 2, 0.6))
    compare(ours, theirs, parity_log, model="sd2 v-pred", scheduler="own", mode="hires Latent (bicubic)",
            size="32->64")


def test_what_the_hires_settings_change(tiny_eps, sd_components, tmp_path, parity_log):
    """Each of denoise, the upscaler and the hires prompt moves the picture by more than the
    parity tolerance, and the moved picture still matches diffusers'."""
    base = sdcli_hires(tiny_eps.ov_dir, tmp_path / "base.png", *hires_args("Latent", 2, 2, 0.5))
    denoise = sdcli_hires(tiny_eps.ov_dir, tmp_path / "d.png", *hires_args("Latent", 2, 2, 0.3))
    compare(denoise, diffusers_hires(sd_components, "Latent", 2 * FIRST, 2, 0.3), parity_log, model="sd15",
            scheduler="pndm", mode="hires Latent denoise 0.3", size="32->64")
    nearest = sdcli_hires(tiny_eps.ov_dir, tmp_path / "n.png", *hires_args("Latent (nearest)", 2, 2, 0.5))
    compare(nearest, diffusers_hires(sd_components, "Latent (nearest)", 2 * FIRST, 2, 0.5), parity_log, model="sd15",
            scheduler="pndm", mode="hires Latent (nearest)", size="32->64")
    prompt = sdcli_hires(tiny_eps.ov_dir, tmp_path / "p.png", *hires_args("Latent", 2, 2, 0.5),
                         "--hires-prompt", "a red boat")
    compare(prompt, diffusers_hires(sd_components, "Latent", 2 * FIRST, 2, 0.5, hires_prompt="a red boat"), parity_log,
            model="sd15", scheduler="pndm", mode="hires prompt", size="32->64")
    moved = {name: int(np.abs(base - other).max()) for name, other in
             (("denoise", denoise), ("upscaler", nearest), ("prompt", prompt))}
    print("hires: moved by", moved)
    assert all(value > 2 for value in moved.values()), moved


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_with_vae_tiling_matches_diffusers(tiny_eps, sd_components, upscaler, tmp_path, parity_log):
    """`--vae-tiling --vae-tile-size 32`: the 64x64 hires picture decoded in 3 x 3 tiles (and, with
    Lanczos, the upscaled picture re-encoded in tiles; the 32x32 first pass is one tile), against
    diffusers with vae.enable_tiling() at the same tile sizes; untiled, the picture moves."""
    from tests.reference import vae_tiling

    with vae_tiling(sd_components["vae"], VAE_TILE):
        theirs = diffusers_hires(sd_components, upscaler, 2 * FIRST, 2, 0.5)
    ours = sdcli_hires(tiny_eps.ov_dir, tmp_path / "tiled.png", *hires_args(upscaler), "--vae-tiling",
                       "--vae-tile-size", VAE_TILE)
    whole = sdcli_hires(tiny_eps.ov_dir, tmp_path / "whole.png", *hires_args(upscaler), "--no-vae-tiling")
    compare(ours, theirs, parity_log, model="sd15", scheduler="pndm", mode=f"hires {upscaler} + VAE tiling",
            size="32->64")
    moved = int(np.abs(ours - whole).max())
    print(f"hires {upscaler} with VAE tiling: max {int(np.abs(ours - theirs).max())} of diffusers'; "
          f"tiling moves it by {moved}")
    assert moved > 2


def test_model_upscaler_hires_matches_diffusers(tiny_eps, sd_components, tmp_path_factory, parity_log):
    """A converted model upscaler (a tiny random Real-ESRGAN Compact, 4x) as the hires upscaler,
    against diffusers with spandrel's torch model run through A1111's steps (engine/upscale.py's
    grid, BGR, then Lanczos from 128 to 64)."""
    import torch
    from PIL import Image
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.convert.random_upscaler import save
    from sdcli.convert.spandrel_import import import_spandrel
    from sdcli.engine import upscale as up

    root = tmp_path_factory.mktemp("hires-upscaler")
    checkpoint = save("compact", root / "tiny-compact.safetensors")
    result = CliRunner().invoke(app, ["convert", str(checkpoint), "--weight-format", "fp32", "--upscaler-dir",
                                      str(root / "ESRGAN"), "--quiet"])
    assert result.exit_code == 0, result.output
    model = import_spandrel().ModelLoader().load_from_file(str(checkpoint)).eval()

    class TorchUpscaler:  # A1111's upscale_pil_patch around the torch model
        def __call__(self, image):
            x = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)) / 255
            with torch.no_grad():
                y = model(torch.from_numpy(x).unsqueeze(0).float())[0].clamp(0, 1).numpy()
            arr = (255.0 * np.moveaxis(y, 0, 2)).round().astype(np.uint8)[:, :, ::-1]
            return Image.fromarray(np.ascontiguousarray(arr), "RGB")

    def a1111(picture, size):
        return Image.fromarray(up.upscale(np.asarray(picture), TorchUpscaler(), size / picture.width))

    theirs = diffusers_hires(sd_components, a1111, 2 * FIRST, 2, 0.5)
    ours = sdcli_hires(tiny_eps.ov_dir, root / "out.png", *hires_args("tiny-compact"), "--upscaler-dir",
                       root / "ESRGAN")
    compare(ours, theirs, parity_log, model="sd15", scheduler="pndm", mode="hires model upscaler", size="32->64")
    lanczos = sdcli_hires(tiny_eps.ov_dir, root / "lanczos.png", *hires_args("Lanczos"))
    moved = int(np.abs(ours - lanczos).max())
    print("hires: the model upscaler moves it from Lanczos by", moved)
    assert moved > 2


def test_sdxl_hires_matches_diffusers(tiny_sdxl, tmp_path, parity_log):
    theirs = diffusers_hires(tiny_sdxl.components(), "Latent", 2 * FIRST, 2, 0.5, xl=True)
    ours = sdcli_hires(tiny_sdxl.ov_dir, tmp_path / "xl.png", *hires_args("Latent"))
    compare(ours, theirs, parity_log, model="sdxl", scheduler="euler", mode="hires Latent", size="32->64")


# -- the PNG, --from-image, the refusals -------------------------------------------------------------
def test_png_fields_and_from_image_redo_it(tiny_eps, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.imaging.image_io import read_png_text
    from sdcli.imaging.params import parse_parameters

    out = tmp_path / "hires.png"
    args = generate_args(tiny_eps.ov_dir, out, "--hires-width", 64, "--hires-height", 48, "--hires-upscaler",
                         "Latent (antialiased)", "--hires-steps", 2, "--hires-denoise", 0.6, "--hires-prompt",
                         "a red boat, calm", "--hires-negative-prompt", "fog", "--hires-scheduler", "euler",
                         "--hires-cfg", 5.5, steps=STEPS, width=FIRST, height=FIRST)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    _, _, fields = parse_parameters(read_png_text(out)["parameters"])
    assert {key: fields.get(key) for key in ("Size", "Hires resize", "Hires upscaler", "Hires steps",
                                             "Denoising strength", "Hires prompt", "Hires negative prompt",
                                             "Hires sampler", "Hires CFG Scale")} == {
        "Size": "32x32", "Hires resize": "64x48", "Hires upscaler": "Latent (antialiased)", "Hires steps": "2",
        "Denoising strength": "0.6", "Hires prompt": "a red boat, calm", "Hires negative prompt": "fog",
        "Hires sampler": "Euler", "Hires CFG Scale": "5.5"}
    again = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--from-image", str(out),
                                      "--output", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()


def test_a1111_hires_png_is_read():
    from sdcli.engine.parameters import settings_from_fields

    fields = {"Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "1",
              "Size": "512x512", "Denoising strength": "0.45", "Hires upscale": "2", "Hires steps": "10",
              "Hires upscaler": "Latent (nearest-exact)", "Hires sampler": "Euler", "Version": "v1.10.1"}
    out = settings_from_fields("a cat", "", fields)
    assert (out["hires_scale"], out["hires_steps"], out["hires_denoise"], out["hires_upscaler"],
            out["hires_scheduler"]) == (2.0, 10, 0.45, "Latent (nearest-exact)", "euler")
    assert "strength" not in out and not out["needs"] and not any("hires" in n for n in out["notes"])


@pytest.mark.parametrize("extra, message", [
    (["--hires-scale", 1], "--hires-scale must be more than 1"),
    (["--hires-scale", 1.3], "multiple of 8"),
    (["--hires-width", 100], "--hires-width"),
    (["--hires-scale", 2, "--hires-upscaler", "4x-UltraSharp"], "--hires-upscaler"),
    (["--hires-scale", 2, "--hires-denoise", 0], "--hires-denoise"),
    (["--hires-steps", 3], "pass --hires-scale"),
    (["--hires-width", 16, "--hires-height", 16], "not larger than the first pass"),
])
def test_bad_hires_input_is_one_line(tiny_eps, tmp_path, extra, message):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, generate_args(tiny_eps.ov_dir, out, *extra, steps=STEPS, width=FIRST, height=FIRST))
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_hires_size_too_large_for_memory_is_refused(tiny_eps, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import sdcli.engine.memory as memory
    from sdcli.cli.app import app

    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    folder_peak = memory.estimate(_folder(tiny_eps), FIRST, FIRST, element_bytes=4).peak
    monkeypatch.setattr(memory, "available_bytes", lambda: 0)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 4 * folder_peak)  # room for the first pass, not 8192x8192
    out = tmp_path / "x.png"
    base = generate_args(tiny_eps.ov_dir, out, steps=STEPS, width=FIRST, height=FIRST)
    assert CliRunner().invoke(app, [*base, "--hires-scale", 2]).exit_code == 0
    out.unlink()
    result = CliRunner().invoke(app, [*base, "--hires-width", 8192, "--hires-height", 8192])
    assert result.exit_code == 2 and "8192x8192 would need about" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def _folder(model):
    from sdcli.model.folder import ModelFolder

    return ModelFolder.open(model.ov_dir)


# -- the A1111 API ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tiny_eps, tmp_path_factory):
    import shutil

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker

    root = tmp_path_factory.mktemp("hires-serve")
    shutil.copytree(tiny_eps.ov_dir, root / "tiny")
    worker = Worker(ModelRegistry(root, root / "tiny"), "tiny", queue_size=4)
    worker.start()
    yield TestClient(create_app(worker)), root / "tiny"
    worker.stop()
    worker.join(30)


def test_api_enable_hr_gives_generate_s_png(client, tmp_path):
    import base64
    import json

    from typer.testing import CliRunner

    from sdcli.cli.app import app

    http, model = client
    assert [m["name"] for m in http.get("/sdapi/v1/latent-upscale-modes").json()] == list(LATENT_MODES)
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "width": 16, "height": 16,
            "firstphase_width": FIRST, "firstphase_height": FIRST, "enable_hr": True, "hr_scale": 2,
            "hr_upscaler": "Latent (nearest-exact)", "hr_second_pass_steps": 2, "denoising_strength": 0.5,
            "hr_sampler_name": "Euler", "hr_cfg": 6}
    r = http.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    served = base64.b64decode(r.json()["images"][0])
    info = json.loads(r.json()["info"])
    assert info["denoising_strength"] == 0.5 and (info["width"], info["height"]) == (FIRST, FIRST)
    out = tmp_path / "cli.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(model), "--prompt", PROMPT, "--negative-prompt",
                                      NEGATIVE, "--seed", SEED, "--steps", STEPS, "--width", FIRST, "--height", FIRST,
                                      "--hires-scale", 2, "--hires-upscaler", "Latent (nearest-exact)",
                                      "--hires-steps", 2, "--hires-denoise", 0.5, "--hires-scheduler", "euler",
                                      "--hires-cfg", 6, "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == served  # the same pixels and parameters, byte for byte
    plain = http.post("/sdapi/v1/txt2img", json={**body, "hr_cfg": None}).json()["images"][0]
    assert base64.b64decode(plain) != served


@pytest.mark.parametrize("field, value", [("hr_scale", 1), ("hr_upscaler", "4x-UltraSharp"), ("hr_resize_x", 100),
                                          ("denoising_strength", 0), ("hr_checkpoint_name", "other"),
                                          ("hr_sampler_name", "Dice roll")])
def test_api_bad_hires_fields_are_422(client, field, value):
    http, _ = client
    body = {"prompt": "x", "steps": STEPS, "width": FIRST, "height": FIRST, "enable_hr": True, field: value}
    r = http.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_progress_counts_both_passes(tiny_eps):
    """Step numbers run on through both passes and end at the total (PNDM's loop counts more
    calls than --steps: the totals come from the loops)."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=False)
    seen = []
    request = GenerationRequest(prompt=PROMPT, steps=STEPS, width=FIRST, height=FIRST, seed=SEED,
                                hires=HiresFix(scale=2, steps=3))
    result = engine.generate(request, lambda info: seen.append((info.index, info.total)))
    assert (result.width, result.height, result.first_pass_size) == (64, 64, (32, 32))
    assert [index for index, _ in seen] == list(range(len(seen))) and seen[-1][1] == len(seen)
    assert all(index < total for index, total in seen) and len(seen) > STEPS + 3 - 1
