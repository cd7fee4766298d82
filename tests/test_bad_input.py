"""Bad input, tried systematically (issue 7), for `generate`, `convert` and `batch`: flags
with wrong types, out-of-range and boundary values; missing, truncated and mismatched
model files; init images and masks in the formats people have; odd prompts; sizes too
large for this machine's memory.

A refused case: exit 2 for the user's mistake (1 for a failure during a valid run), one
line `sdcli: error: ...` naming the problem (or, for a flag click cannot parse, click's
usual usage block ending in `Error: ...`), no traceback, and nothing written.  An
accepted case: exit 0 and the image written (warnings allowed).

Cases run in-process through typer's CliRunner (a process per case would take many
minutes); the few where a C library could write on stderr also run as real processes.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from tests.models import build_mismatched

# --- running and checking ---------------------------------------------------------------


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def uncaught(result) -> BaseException | None:
    exc = result.exception
    return None if exc is None or isinstance(exc, SystemExit) else exc


def assert_refused(result, code: int, needle: str) -> None:
    assert uncaught(result) is None, f"uncaught {uncaught(result)!r}\n{result.output}"
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdcli: error: "), result.stderr  # click's parse errors too
    assert needle.lower() in result.stderr.lower(), (needle, result.stderr)


def assert_done(result, image: Path) -> None:
    assert uncaught(result) is None, f"uncaught {uncaught(result)!r}\n{result.output}"
    assert result.exit_code == 0, result.stderr
    assert "error" not in result.stderr.lower()
    from sdcli.imaging.image_io import read_rgb

    assert read_rgb(image).ndim == 3


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --- files ------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """Init images and masks in the formats people have, and files that are not images."""
    import cv2
    from PIL import Image

    d = tmp_path_factory.mktemp("bad-input-images")
    h, w = 48, 80
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80 wide, 48 high; shown rotated 90 degrees clockwise: 48 wide, 80 high
    Image.fromarray(rgb).save(d / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(rgb[:, :, 0]).save(d / "rotated-mask.jpg", exif=exif.tobytes())
    Image.fromarray(rgb).save(d / "photo.webp")
    Image.fromarray(np.dstack([rgb, np.where(x < 40, 0, 255).astype(np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb[:, :, 1]).save(d / "gray.png")
    cv2.imwrite(str(d / "gray16.png"), (rgb[:, :, 0].astype(np.uint16) * 257))
    cv2.imwrite(str(d / "rgb16.png"), (rgb.astype(np.uint16) * 257))
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    Image.fromarray(rgb).save(d / "picture.bmp")
    Image.fromarray(rgb).save(d / "picture.tiff")
    Image.fromarray(rgb).save(d / "picture.gif")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rgb[:1, :1]).save(d / "one-pixel.png")
    png_header_only(d / "huge.png", 100_000, 100_000)
    png_header_only(d / "big.png", 20_000, 20_000)
    (d / "zero-bytes.png").write_bytes(b"")
    (d / "text.png").write_text("this is text, not an image\n")
    whole = (d / "rgb.png").read_bytes()
    (d / "truncated.png").write_bytes(whole[: len(whole) // 2])
    jpeg = (d / "rotated.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (d / "folder.png").mkdir()
    from sdcli.imaging.image_io import save_png

    def stored(name: str, fields: str) -> None:
        save_png(d / name, rgb, f"a fox\nNegative prompt: rain\n{fields}")

    stored("settings-ok.png", "Steps: 1, Sampler: Euler, CFG scale: 7.5, Seed: 3, Size: 64x64")
    stored("settings-steps-0.png", "Steps: 0, Seed: 3, Size: 64x64")
    stored("settings-steps-text.png", "Steps: many, Seed: 3, Size: 64x64")
    stored("settings-size-65.png", "Steps: 1, Seed: 3, Size: 65x64")
    stored("settings-size-one-number.png", "Steps: 1, Seed: 3, Size: 64")
    stored("settings-size-huge.png", "Steps: 1, Seed: 3, Size: 8000000x8000000")
    stored("settings-cfg-nan.png", "Steps: 1, CFG scale: nan, Seed: 3, Size: 64x64")
    stored("settings-sampler.png", "Steps: 1, Sampler: Dice roll, Seed: 3, Size: 64x64")
    stored("settings-seed.png", "Steps: 1, Seed: -5, Size: 64x64")
    stored("settings-strength.png", "Steps: 1, Seed: 3, Size: 64x64, Denoising strength: 7")
    return d


# --- generate: flags --------------------------------------------------------------------

def generate_args(model, out: Path) -> list:
    return ["generate", "--model", model.ov_dir, "--prompt", "a red fox", "--steps", "1", "--seed", "1",
            "--width", "64", "--height", "64", "--output", out / "o.png", "--quiet"]


# (id, extra flags: the last of a repeated flag wins; exit code; text the error names)
GENERATE_FLAGS = [
    ("steps-text", ["--steps", "abc"], 2, "--steps"),
    ("steps-float", ["--steps", "1.5"], 2, "--steps"),
    ("steps-empty", ["--steps", ""], 2, "--steps"),
    ("steps-hex", ["--steps", "0x10"], 2, "--steps"),
    ("steps-0", ["--steps", "0"], 2, "--steps"),
    ("steps-negative", ["--steps", "-3"], 2, "--steps"),
    ("steps-1001", ["--steps", "1001"], 2, "--steps"),
    ("steps-huge", ["--steps", "9" * 30], 2, "--steps"),
    ("strength-text", ["--strength", "lots"], 2, "--strength"),
    ("strength-nan", ["--strength", "nan"], 2, "--strength"),
    ("strength-inf", ["--strength", "inf"], 2, "--strength"),
    ("strength-negative", ["--strength", "-0.1"], 2, "--strength"),
    ("strength-above-1", ["--strength", "1.01"], 2, "--strength"),
    ("guidance-text", ["--guidance-scale", "x"], 2, "--guidance-scale"),
    ("guidance-nan", ["--guidance-scale", "nan"], 2, "--guidance-scale"),
    ("guidance-inf", ["--guidance-scale", "inf"], 2, "--guidance-scale"),
    ("guidance-1e400", ["--guidance-scale", "1e400"], 2, "--guidance-scale"),
    ("guidance-negative", ["--guidance-scale", "-1"], 2, "--guidance-scale"),
    ("guidance-above-100", ["--guidance-scale", "100.5"], 2, "--guidance-scale"),
    ("seed-negative", ["--seed", "-1"], 2, "--seed"),
    ("seed-2^64", ["--seed", str(2**64)], 2, "--seed"),
    ("seed-text", ["--seed", "abc"], 2, "--seed"),
    ("seed-float", ["--seed", "1.5"], 2, "--seed"),
    ("width-0", ["--width", "0"], 2, "--width"),
    ("width-negative", ["--width", "-64"], 2, "--width"),
    ("width-65", ["--width", "65"], 2, "--width"),
    ("width-text", ["--width", "wide"], 2, "--width"),
    ("width-fraction", ["--width", "64.5"], 2, "--width"),
    ("height-0", ["--height", "0"], 2, "--height"),
    ("height-63", ["--height", "63"], 2, "--height"),
    ("height-text", ["--height", "tall"], 2, "--height"),
    ("size-too-large-for-memory", ["--width", "8000000"], 2, "GB of memory"),
    ("size-both-too-large", ["--width", "65536", "--height", "65536"], 2, "GB of memory"),
    ("num-images-0", ["--num-images", "0"], 2, "--num-images"),
    ("num-images-10001", ["--num-images", "10001"], 2, "--num-images"),
    ("num-images-text", ["--num-images", "two"], 2, "--num-images"),
    ("mask-blur-negative", ["--mask-blur", "-1"], 2, "--mask-blur"),
    ("mask-blur-257", ["--mask-blur", "257"], 2, "--mask-blur"),
    ("mask-blur-text", ["--mask-blur", "soft"], 2, "--mask-blur"),
    ("scheduler-unknown", ["--scheduler", "nope"], 2, "nope"),
    ("scheduler-empty", ["--scheduler", ""], 2, "scheduler"),
    ("precision-f64", ["--precision", "f64"], 2, "--precision"),
    ("precision-empty", ["--precision", ""], 2, "--precision"),
    ("rng-dice", ["--rng", "dice"], 2, "--rng"),
    ("device-unknown", ["--device", "XYZ"], 2, "XYZ"),
    ("device-empty", ["--device", ""], 2, "device"),
    ("device-bad-id", ["--device", "CPU:99"], 2, "CPU:99"),
    ("clip-skip-0", ["--clip-skip", "0"], 2, "--clip-skip"),
    ("clip-skip-25", ["--clip-skip", "25"], 2, "--clip-skip"),
    ("deepcache-0", ["--deepcache", "0"], 2, "--deepcache"),
    ("deepcache-1001", ["--deepcache", "1001"], 2, "--deepcache"),
    ("vae-unknown", ["--vae", "medium"], 2, "--vae"),
    ("vae-tiny-absent", ["--vae", "tiny"], 2, "tiny VAE"),
    ("output-jpg", ["--output", "{out}/o.jpg"], 2, ".png"),
    ("output-no-suffix", ["--output", "{out}/o"], 2, ".png"),
    ("output-empty", ["--output", ""], 2, ".png"),
    ("output-folder-missing", ["--output", "{out}/no/such/o.png"], 2, "cannot write"),
    ("output-is-a-folder", ["--output", "{out}/made.png"], 2, "is a folder"),
    ("model-missing", ["--model", "{out}/nowhere"], 2, "not found"),
    ("model-is-a-file", ["--model", "{images}/rgb.png"], 2, "model folder"),
    ("model-empty-folder", ["--model", "{out}/made.png"], 2, "incomplete"),
    ("unknown-flag", ["--bogus"], 2, "--bogus"),
    ("flag-without-value", ["--steps"], 2, "--steps"),
    ("mask-without-init-image", ["--mask", "{images}/gray.png"], 2, "--init-image"),
    ("strength-0-leaves-no-step", ["--init-image", "{images}/rgb.png", "--strength", "0"], 2, "strength"),
    ("from-image-missing", ["--from-image", "{images}/nowhere.png"], 2, "not found"),
    ("from-image-not-png", ["--from-image", "{images}/rotated.jpg"], 2, "not a PNG"),
    ("from-image-without-settings", ["--from-image", "{images}/rgb.png"], 2, "no generation settings"),
    ("prompt-not-utf8", ["--prompt", "a \udcff fox"], 2, "UTF-8"),
    ("negative-prompt-not-utf8", ["--negative-prompt", "\udcfe"], 2, "UTF-8"),
    ("prompt-weight-huge", ["--prompt", "(a fox:" + "9" * 45 + ")"], 2, "emphasis weight"),
    ("prompt-nested-too-deep", ["--prompt", "(" * 100 + "a fox" + ")" * 100], 2, "emphasis weight"),
]

# Boundary and odd values that must work.
GENERATE_ACCEPTED = [
    ("steps-1", ["--steps", "1"]),
    ("strength-1", ["--init-image", "{images}/rgb.png", "--strength", "1"]),
    ("guidance-0", ["--guidance-scale", "0"]),
    ("guidance-100", ["--guidance-scale", "100"]),
    ("seed-0", ["--seed", "0"]),
    ("seed-2^64-1", ["--seed", str(2**64 - 1)]),
    ("size-8x8", ["--width", "8", "--height", "8"]),
    ("size-72x64", ["--width", "72"]),
    ("mask-blur-0", ["--init-image", "{images}/rgb.png", "--mask", "{images}/gray.png", "--strength", "1", "--mask-blur", "0"]),
    ("mask-blur-256", ["--init-image", "{images}/rgb.png", "--mask", "{images}/gray.png", "--strength", "1", "--mask-blur", "256"]),
    ("scheduler-a1111-name", ["--scheduler", "DPM++ 2M Karras"]),
    ("prompt-empty", ["--prompt", ""]),
    ("prompt-whitespace", ["--prompt", "  \t  "]),
    ("prompt-10000-chars", ["--prompt", ("a red fox, " * 910)[:10_000]]),
    ("prompt-emoji", ["--prompt", "🦊🔥🌈 " * 60]),
    ("prompt-right-to-left", ["--prompt", "שועל אדום בשלג \u200f ثعلب أحمر في الثلج"]),
    ("prompt-control-characters", ["--prompt", "a\x00 fox\x1b[31m in\train\r\n"]),
    ("prompt-unbalanced-open", ["--prompt", "((a fox [in the snow"]),
    ("prompt-unbalanced-close", ["--prompt", "a fox)) in]] snow:1.3)"]),
    ("prompt-weight-unclosed", ["--prompt", "(a fox:1.5"]),
    ("prompt-escapes", ["--prompt", "\\(a fox\\) \\\\ \\"]),
    ("prompt-colon-junk", ["--prompt", "(a:nan) (b:1e308) (c:-0)"]),
    ("negative-prompt-long", ["--negative-prompt", "blurry, " * 300]),
    ("no-emphasis-huge-weight", ["--no-emphasis", "--prompt", "(a fox:" + "9" * 45 + ")"]),
    ("from-image", ["--from-image", "{images}/settings-ok.png"]),
]


def _fill(args, out: Path, images: Path) -> list:
    return [a.format(out=out, images=images) if isinstance(a, str) and "{" in a else a for a in args]


@pytest.mark.parametrize("extra,code,needle", [c[1:] for c in GENERATE_FLAGS], ids=[f"generate-{c[0]}" for c in GENERATE_FLAGS])
def test_generate_bad_flags(tiny_eps, images, tmp_path, extra, code, needle):
    out = tmp_path / "out"
    out.mkdir()
    (out / "made.png").mkdir()
    before = listing(out)
    result = invoke(*generate_args(tiny_eps, out), *_fill(extra, out, images))
    assert_refused(result, code, needle)
    assert listing(out) == before


@pytest.mark.parametrize("extra", [c[1] for c in GENERATE_ACCEPTED], ids=[f"generate-{c[0]}" for c in GENERATE_ACCEPTED])
def test_generate_odd_but_valid_input_works(tiny_eps, images, tmp_path, extra):
    args = generate_args(tiny_eps, tmp_path)
    if "--from-image" in extra:  # the stored settings, not the flags, say what to do
        args = ["generate", "--model", tiny_eps.ov_dir, "--output", tmp_path / "o.png", "--quiet"]
    assert_done(invoke(*args, *_fill(extra, tmp_path, images)), tmp_path / "o.png")


FROM_IMAGE = [
    ("steps-0", "settings-steps-0.png", "--steps"),
    ("steps-text", "settings-steps-text.png", "unreadable"),
    ("size-65", "settings-size-65.png", "--width"),
    ("size-one-number", "settings-size-one-number.png", "unreadable"),
    ("size-huge", "settings-size-huge.png", "GB of memory"),
    ("cfg-nan", "settings-cfg-nan.png", "--guidance-scale"),
    ("sampler-unknown", "settings-sampler.png", "Dice roll"),
    ("seed-negative", "settings-seed.png", "--seed"),
    ("strength-7", "settings-strength.png", "--strength"),
]


@pytest.mark.parametrize("name,needle", [c[1:] for c in FROM_IMAGE], ids=[f"generate-from-image-{c[0]}" for c in FROM_IMAGE])
def test_generate_from_image_with_bad_stored_settings(tiny_eps, images, tmp_path, name, needle):
    """Settings read from a PNG get the checks of the flags they stand for."""
    result = invoke("generate", "--model", tiny_eps.ov_dir, "--from-image", images / name,
                    "--output", tmp_path / "o.png", "--quiet")
    assert_refused(result, 2, needle)
    assert listing(tmp_path) == []


# --- generate: init images and masks ----------------------------------------------------

IMAGE_FORMATS = ["rgb.png", "rotated.jpg", "photo.webp", "rgba.png", "gray.png", "gray16.png", "rgb16.png",
                 "palette.png", "picture.bmp", "picture.tiff", "picture.gif", "cmyk.jpg", "one-pixel.png"]
BAD_IMAGES = [
    ("huge-header", "huge.png", "100000x100000"),
    ("big-header", "big.png", "20000x20000"),
    ("zero-bytes", "zero-bytes.png", "empty"),
    ("text-named-png", "text.png", "cannot read"),
    ("truncated-png", "truncated.png", "cannot read"),
    ("truncated-jpeg", "truncated.jpg", "cannot read"),
    ("folder", "folder.png", "is a folder"),
    ("missing", "missing.png", "not found"),
]


@pytest.mark.parametrize("name", IMAGE_FORMATS, ids=[f"generate-init-image-{n}" for n in IMAGE_FORMATS])
def test_init_image_formats(tiny_eps, images, tmp_path, name):
    result = invoke(*generate_args(tiny_eps, tmp_path), "--init-image", images / name, "--strength", "1")
    assert_done(result, tmp_path / "o.png")


@pytest.mark.parametrize("name", IMAGE_FORMATS, ids=[f"generate-mask-{n}" for n in IMAGE_FORMATS])
def test_mask_formats(tiny_eps, images, tmp_path, name):
    result = invoke(*generate_args(tiny_eps, tmp_path), "--init-image", images / "rgb.png", "--mask", images / name,
                    "--strength", "1")
    assert_done(result, tmp_path / "o.png")


@pytest.mark.parametrize("role,name,needle", [(role, *c[1:]) for role in ("init-image", "mask") for c in BAD_IMAGES],
                         ids=[f"generate-{role}-{c[0]}" for role in ("init-image", "mask") for c in BAD_IMAGES])
def test_bad_images_are_refused(tiny_eps, images, tmp_path, role, name, needle):
    out = tmp_path / "out"
    out.mkdir()
    extra = (["--init-image", images / name] if role == "init-image"
             else ["--init-image", images / "rgb.png", "--mask", images / name])
    assert_refused(invoke(*generate_args(tiny_eps, out), *extra, "--strength", "1"), 2, needle)
    assert listing(out) == []


def test_one_pixel_init_image_needs_a_size(tiny_eps, images, tmp_path):
    result = invoke("generate", "--model", tiny_eps.ov_dir, "--prompt", "x", "--steps", "1", "--strength", "1",
                    "--init-image", images / "one-pixel.png", "--output", tmp_path / "o.png", "--quiet")
    assert_refused(result, 2, "8x8")
    assert listing(tmp_path) == []


def test_exif_rotation_is_honoured(tiny_eps, images, tmp_path):
    """The JPEG is stored 80x48 with EXIF orientation 6: the image it shows is 48 wide, 80 high."""
    from sdcli.imaging.image_io import read_mask, read_rgb

    assert read_rgb(images / "rotated.jpg").shape == (80, 48, 3)
    assert read_mask(images / "rotated-mask.jpg").shape == (80, 48)
    out = tmp_path / "o.png"
    result = invoke("generate", "--model", tiny_eps.ov_dir, "--prompt", "x", "--steps", "1", "--seed", "1",
                    "--strength", "1", "--init-image", images / "rotated.jpg", "--output", out, "--quiet")
    assert_done(result, out)
    assert read_rgb(out).shape == (80, 48, 3)  # the size comes from the init image as shown


@pytest.mark.parametrize("orientation", range(1, 9))
def test_alpha_masks_follow_exif_orientation_as_cv2_does(tmp_path, orientation):
    """cv2 ignores EXIF when it keeps the alpha channel: sdcli applies it as cv2 does for colour."""
    import cv2
    from PIL import Image

    from sdcli.imaging.image_io import orient

    rgba = (np.random.default_rng(orientation).random((6, 10, 4)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(rgba, "RGBA").save(path, exif=exif.tobytes())
    unchanged = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, :3]
    assert np.array_equal(orient(unchanged, orientation), cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_huge_image_header_is_refused_as_a_real_process_with_one_line(tiny_eps, images, tmp_path):
    """As a process: no C library (libpng, OpenCV) adds lines to stderr."""
    for name in ("huge.png", "truncated.png", "text.png"):
        r = subprocess.run([sys.executable, "-m", "sdcli", *map(str, generate_args(tiny_eps, tmp_path)),
                            "--init-image", images / name], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and name in r.stderr, r.stderr
    assert listing(tmp_path) == []


# --- generate: a fixed-length UNet truncates, with a warning ----------------------------

def test_long_prompt_on_a_fixed_length_unet_warns_and_works(tmp_path):
    model = Path(__file__).parent / "data" / "optimum-tiny"
    out = tmp_path / "o.png"
    result = invoke("generate", "--model", model, "--prompt", "a red fox, " * 900, "--steps", "1", "--seed", "1",
                    "--width", "64", "--height", "64", "--output", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "truncated" in result.stderr and "warning" in result.stderr
    assert out.is_file()


# --- memory -----------------------------------------------------------------------------

def test_a_machine_without_enough_memory_refuses_before_loading(tiny_eps, tmp_path, monkeypatch):
    import sdcli.engine.memory

    monkeypatch.setattr(sdcli.engine.memory, "available_bytes", lambda: 1_000_000)
    monkeypatch.setattr(sdcli.engine.memory, "resident_bytes", lambda: 0)
    result = invoke(*generate_args(tiny_eps, tmp_path))
    assert_refused(result, 2, "would need about")
    assert "GB is available" in result.stderr
    assert listing(tmp_path) == []
    result = invoke(*generate_args(tiny_eps, tmp_path), env={"SDCLI_SKIP_MEMORY_CHECK": "1"})
    assert_done(result, tmp_path / "o.png")


SD15_PARAMETERS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae_decoder": 49_490_199, "vae_encoder": 34_163_592}


def sd15_folder():
    """SD 1.5's configs and weight counts, without its 2 GB of files."""
    from types import SimpleNamespace

    from sdcli.convert.random_model import SD15

    return SimpleNamespace(
        vae_scale_factor=8, root=Path("."), ir=lambda name: name, text_encoders=["text_encoder"], denoiser="unet",
        vae=lambda kind: SimpleNamespace(decoder="vae_decoder", encoder="vae_encoder"),
        unet_config={"block_out_channels": list(SD15["unet"]["block_out_channels"])},
        vae_config={"block_out_channels": list(SD15["vae"]["block_out_channels"])},
    )


@pytest.mark.parametrize("size,element_bytes,measured_gb", [(512, 2, 1.96), (512, 4, 3.94)],
                         ids=["sd15-512-bf16", "sd15-512-f32"])
def test_memory_estimate_matches_sd15_measurements(monkeypatch, size, element_bytes, measured_gb):
    """Whole-process peak RSS of a warm 512x512 SD 1.5 generate on the 2-core EPYC (README,
    Performance): the estimate lands within 15%."""
    import sdcli.engine.memory

    monkeypatch.setattr(sdcli.engine.memory, "ir_parameters", lambda name: SD15_PARAMETERS[name])
    est = sdcli.engine.memory.estimate(sd15_folder(), size, size, element_bytes=element_bytes)
    assert est.stage == "denoising"
    assert est.peak / 1e9 == pytest.approx(measured_gb, rel=0.15)


def test_memory_estimate_refuses_only_what_cannot_fit(monkeypatch):
    import sdcli.engine.memory

    monkeypatch.setattr(sdcli.engine.memory, "ir_parameters", lambda name: SD15_PARAMETERS[name])
    monkeypatch.setattr(sdcli.engine.memory, "resident_bytes", lambda: 0)
    monkeypatch.setattr(sdcli.engine.memory, "available_bytes", lambda: 8_000_000_000)  # an 8 GB laptop, mostly free
    folder = sd15_folder()
    assert sdcli.engine.memory.require(folder, 1024, 1024, precision="bf16").peak < 4e9
    assert sdcli.engine.memory.require(folder, 1024, 1024, precision="f32", images=4, init_image=True).peak < 8e9
    with pytest.raises(Exception, match=r"4096x4096 would need about [0-9.]+ GB of memory \(decoding\)"):
        sdcli.engine.memory.require(folder, 4096, 4096, precision="bf16", vae_tiling=False)
    # VAE tiling on by itself (engine/vae_tiling.py): the decode then fits, the denoising does not
    with pytest.raises(Exception, match=r"4096x4096 would need about [0-9.]+ GB of memory \(denoising\)"):
        sdcli.engine.memory.require(folder, 4096, 4096, precision="bf16")
    # 3072x3072: only a whole decode is too large, in tiles of 512 it fits
    with pytest.raises(Exception, match=r"\(decoding\)"):
        sdcli.engine.memory.require(folder, 3072, 3072, precision="bf16", vae_tiling=False)
    assert sdcli.engine.memory.require(folder, 3072, 3072, precision="bf16", vae_tile_size=512).stage == "denoising"
    low = sdcli.engine.memory.estimate(folder, 2048, 2048, images=3, low_memory=True)
    assert low.peak < sdcli.engine.memory.estimate(folder, 2048, 2048, images=3).peak


# --- model folders ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def other_model(tmp_path_factory):
    """A tiny model that does not fit tiny_eps: 8 latent channels, 48-wide text embeddings."""
    return build_mismatched(tmp_path_factory.mktemp("other-model"))


def _json_set(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def _json_del(path: Path, key: str) -> None:
    data = json.loads(path.read_text())
    data.pop(key, None)
    path.write_text(json.dumps(data))


def _halve(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _swap(folder: Path, other: Path, component: str, files=None) -> None:
    if files is None:
        shutil.rmtree(folder / component)
        shutil.copytree(other / component, folder / component)
    for name in files or []:
        shutil.copy(other / component / name, folder / component / name)


IR = ["openvino_model.xml", "openvino_model.bin"]

# (id, change to a copy of the converted tiny model (d: its folder, o: the other model's), needle)
MODEL_FOLDERS = [
    ("unet-bin-cut-in-half", lambda d, o: _halve(d / "unet" / "openvino_model.bin"), "unet: "),
    ("text-encoder-bin-cut-in-half", lambda d, o: _halve(d / "text_encoder" / "openvino_model.bin"), "text_encoder"),
    ("vae-decoder-bin-cut-in-half", lambda d, o: _halve(d / "vae_decoder" / "openvino_model.bin"), "vae_decoder"),
    ("unet-bin-empty", lambda d, o: (d / "unet" / "openvino_model.bin").write_bytes(b""), "unet"),
    ("unet-xml-cut-in-half", lambda d, o: _halve(d / "unet" / "openvino_model.xml"), "not a readable OpenVINO IR"),
    ("unet-xml-missing", lambda d, o: (d / "unet" / "openvino_model.xml").unlink(), "openvino_model.xml is missing"),
    ("text-encoder-missing", lambda d, o: shutil.rmtree(d / "text_encoder"), "text_encoder/ is missing"),
    ("unet-from-another-model", lambda d, o: _swap(d, o, "unet"), "a UNet from another model"),
    ("text-encoder-from-another-model", lambda d, o: _swap(d, o, "text_encoder"), "hidden_size 48"),
    ("vae-from-another-model", lambda d, o: _swap(d, o, "vae_decoder"), "8 latent channels"),
    ("unet-ir-from-another-model", lambda d, o: _swap(d, o, "unet", IR), "sample with 8"),
    ("text-encoder-ir-from-another-model", lambda d, o: _swap(d, o, "text_encoder", IR), "last_hidden_state with 48"),
    ("vae-ir-from-another-model", lambda d, o: _swap(d, o, "vae_decoder", IR), "latent_sample with 8"),
    ("ir-version-from-a-newer-openvino", lambda d, o: _replace_once(d / "unet" / "openvino_model.xml", 'version="11"', 'version="12"'), "IR version 12"),
    ("ir-unknown-opset", lambda d, o: _replace_once(d / "unet" / "openvino_model.xml", 'version="opset1"', 'version="opset99"'), "opset99"),
    ("ir-unknown-operation", lambda d, o: _replace_once(d / "unet" / "openvino_model.xml", 'type="Add"', 'type="FancyOp"'), "FancyOp"),
    ("tokenizer-missing", lambda d, o: shutil.rmtree(d / "tokenizer"), "tokenizer"),
    ("tokenizer-files-missing", lambda d, o: [f.unlink() for f in (d / "tokenizer").iterdir()], "tokenizer is missing"),
    ("tokenizer-json-garbage", lambda d, o: (d / "tokenizer" / "tokenizer.json").write_text("{garbage"), "tokenizer.json"),
    ("tokenizer-json-a-list", lambda d, o: (d / "tokenizer" / "tokenizer.json").write_text("[]"), "tokenizer.json"),
    ("tokenizer-config-a-list", lambda d, o: (d / "tokenizer" / "tokenizer_config.json").write_text("[1]"), "JSON object"),
    ("tokenizer-bos-unknown", lambda d, o: _json_set(d / "tokenizer" / "tokenizer_config.json", bos_token="<nope>"), "not in the vocabulary"),
    ("tokenizer-bos-a-number", lambda d, o: _json_set(d / "tokenizer" / "tokenizer_config.json", bos_token=5), "bos_token"),
    ("scheduler-config-missing", lambda d, o: (d / "scheduler" / "scheduler_config.json").unlink(), "scheduler_config.json is missing"),
]

# (id, file, change, needle): part 2 of the issue, a config's types and ranges
CONFIGS = [
    ("unet-not-json", "unet/config.json", "{not json", "not valid JSON"),
    ("unet-a-list", "unet/config.json", "[1, 2]", "JSON object"),
    ("unet-a-string", "unet/config.json", '"unet"', "JSON object"),
    ("unet-empty-file", "unet/config.json", "", "not valid JSON"),
    ("unet-deeply-nested", "unet/config.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("unet-5000-digit-number", "unet/config.json", '{"sample_size": ' + "9" * 5000 + "}", "not valid JSON"),
    ("unet-huge-file", "unet/config.json", '{"x": "' + "a" * (5 << 20) + '"}', "MB"),
    ("unet-not-utf8", "unet/config.json", b"\xff\xfe{}", "not valid JSON"),
    ("unet-huge-sample-size", "unet/config.json", {"sample_size": 10**9}, "sample_size"),
    ("unet-negative-sample-size", "unet/config.json", {"sample_size": -4}, "sample_size"),
    ("unet-sample-size-text", "unet/config.json", {"sample_size": "64"}, "sample_size"),
    ("unet-sample-size-true", "unet/config.json", {"sample_size": True}, "sample_size"),
    ("unet-negative-channels", "unet/config.json", {"in_channels": -4}, "in_channels"),
    ("unet-zero-out-channels", "unet/config.json", {"out_channels": 0}, "out_channels"),
    ("unet-cross-attention-null", "unet/config.json", {"cross_attention_dim": None}, "cross_attention_dim"),
    ("unet-cross-attention-huge", "unet/config.json", {"cross_attention_dim": 10**7}, "cross_attention_dim"),
    ("unet-blocks-not-a-list", "unet/config.json", {"block_out_channels": 320}, "block_out_channels"),
    ("unet-blocks-negative", "unet/config.json", {"block_out_channels": [32, -64]}, "block_out_channels"),
    ("unet-blocks-too-many", "unet/config.json", {"block_out_channels": [32] * 20}, "block_out_channels"),
    ("unet-time-cond-negative", "unet/config.json", {"time_cond_proj_dim": -1}, "time_cond_proj_dim"),
    ("vae-not-json", "vae_decoder/config.json", "nope", "not valid JSON"),
    ("vae-latent-channels-0", "vae_decoder/config.json", {"latent_channels": 0}, "latent_channels"),
    ("vae-latent-channels-huge", "vae_decoder/config.json", {"latent_channels": 10**6}, "latent_channels"),
    ("vae-blocks-empty", "vae_decoder/config.json", {"block_out_channels": []}, "block_out_channels"),
    ("vae-blocks-too-many", "vae_decoder/config.json", {"block_out_channels": [16] * 40}, "block_out_channels"),
    ("vae-scaling-0", "vae_decoder/config.json", {"scaling_factor": 0}, "scaling_factor"),
    ("vae-scaling-negative", "vae_decoder/config.json", {"scaling_factor": -0.18}, "scaling_factor"),
    ("vae-scaling-nan", "vae_decoder/config.json", '{"scaling_factor": NaN, "block_out_channels": [16, 32]}', "scaling_factor"),
    ("vae-scaling-infinity", "vae_decoder/config.json", '{"scaling_factor": Infinity, "block_out_channels": [16, 32]}', "scaling_factor"),
    ("vae-shift-text", "vae_decoder/config.json", {"shift_factor": "zero"}, "shift_factor"),
    ("vae-encoder-latent-0", "vae_encoder/config.json", {"latent_channels": 0}, "vae_encoder/config.json"),
    ("scheduler-not-json", "scheduler/scheduler_config.json", "{", "not valid JSON"),
    ("scheduler-a-list", "scheduler/scheduler_config.json", "[]", "JSON object"),
    ("scheduler-timesteps-10^12", "scheduler/scheduler_config.json", {"num_train_timesteps": 10**12}, "num_train_timesteps"),
    ("scheduler-timesteps-0", "scheduler/scheduler_config.json", {"num_train_timesteps": 0}, "num_train_timesteps"),
    ("scheduler-timesteps-float", "scheduler/scheduler_config.json", {"num_train_timesteps": 1000.5}, "num_train_timesteps"),
    ("scheduler-beta-end-below-start", "scheduler/scheduler_config.json", {"beta_start": 0.02, "beta_end": 0.001}, "beta_start"),
    ("scheduler-beta-negative", "scheduler/scheduler_config.json", {"beta_start": -0.1}, "beta_start"),
    ("scheduler-beta-above-1", "scheduler/scheduler_config.json", {"beta_end": 1.5}, "beta_end"),
    ("scheduler-beta-text", "scheduler/scheduler_config.json", {"beta_end": "0.012"}, "beta_end"),
    ("scheduler-prediction-unknown", "scheduler/scheduler_config.json", {"prediction_type": "flow"}, "prediction_type"),
    ("scheduler-prediction-number", "scheduler/scheduler_config.json", {"prediction_type": 1}, "prediction_type"),
    ("scheduler-steps-offset-negative", "scheduler/scheduler_config.json", {"steps_offset": -1}, "steps_offset"),
    ("scheduler-trained-betas-short", "scheduler/scheduler_config.json", {"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ("scheduler-trained-betas-a-dict", "scheduler/scheduler_config.json", {"trained_betas": {"a": 1}}, "trained_betas"),
    ("scheduler-clip-sample-text", "scheduler/scheduler_config.json", {"clip_sample": "yes"}, "clip_sample"),
    ("scheduler-class-a-number", "scheduler/scheduler_config.json", {"_class_name": 7}, "_class_name"),
    ("scheduler-class-unknown", "scheduler/scheduler_config.json", {"_class_name": "MagicScheduler"}, "MagicScheduler"),
    ("text-encoder-hidden-0", "text_encoder/config.json", {"hidden_size": 0}, "hidden_size"),
    ("text-encoder-a-list", "text_encoder/config.json", "[]", "JSON object"),
    ("text-encoder-positions-huge", "text_encoder/config.json", {"max_position_embeddings": 10**9}, "max_position_embeddings"),
    ("model-index-a-list", "model_index.json", "[]", "JSON object"),
    ("model-index-bad-entry", "model_index.json", {"unet": ["diffusers", "UNet2DConditionModel", "extra"]}, "model_index.json"),
    ("model-index-not-json", "model_index.json", "{,}", "not valid JSON"),
]


def _change_config(path: Path, change) -> None:
    if isinstance(change, dict):
        _json_set(path, **change)
    elif isinstance(change, bytes):
        path.write_bytes(change)
    else:
        path.write_text(change)


def _broken_copy(model, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(model.ov_dir, folder)
    return folder


@pytest.mark.parametrize("change,needle", [c[1:] for c in MODEL_FOLDERS], ids=[f"generate-model-{c[0]}" for c in MODEL_FOLDERS])
def test_broken_or_mismatched_model_folders(tiny_eps, other_model, tmp_path, change, needle):
    folder = _broken_copy(tiny_eps, tmp_path)
    change(folder, other_model.ov_dir)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(invoke(*generate_args(tiny_eps, out)[:1], "--model", folder, *generate_args(tiny_eps, out)[3:]),
                   2, needle)
    assert listing(out) == []


@pytest.mark.parametrize("file,change,needle", [c[1:] for c in CONFIGS], ids=[f"generate-config-{c[0]}" for c in CONFIGS])
def test_config_validation(tiny_eps, tmp_path, file, change, needle):
    folder = _broken_copy(tiny_eps, tmp_path)
    _change_config(folder / file, change)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(invoke(*generate_args(tiny_eps, out)[:1], "--model", folder, *generate_args(tiny_eps, out)[3:]),
                   2, needle)
    assert listing(out) == []


def test_ir_from_a_newer_openvino_is_one_line_as_a_process(tiny_eps, tmp_path):
    """OpenVINO hands an IR it cannot read to its other frontends, whose C++ logging would
    spill onto stderr: sdcli reads the version first."""
    folder = _broken_copy(tiny_eps, tmp_path)
    _replace_once(folder / "unet" / "openvino_model.xml", 'version="11"', 'version="12"')
    r = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", folder, "--prompt", "x", "--steps", "1",
                        "--output", tmp_path / "o.png", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "IR version 12" in r.stderr, r.stderr


# --- convert ----------------------------------------------------------------------------

# (id, arguments after `convert`, exit code, needle); {src}: a copy of the tiny diffusers folder
CONVERT_FLAGS = [
    ("weight-format-int4", ["{src}", "--weight-format", "int4"], 2, "--weight-format"),
    ("weight-format-empty", ["{src}", "--weight-format", ""], 2, "--weight-format"),
    ("weight-format-upper-case", ["{src}", "--weight-format", "FP16"], 2, "--weight-format"),
    ("source-empty", [""], 2, "SOURCE is empty"),
    ("source-missing-folder", ["{out}/nowhere"], 2, "nowhere"),
    ("source-a-text-file", ["{images}/text.png"], 2, "not a model folder"),
    ("source-folder-without-index", ["{images}"], 2, "model_index.json"),
    ("source-missing-checkpoint", ["{out}/model.safetensors"], 2, "not found"),
    ("source-zero-byte-checkpoint", ["{images}/zero.safetensors"], 2, "zero.safetensors"),
    ("source-garbage-checkpoint", ["{images}/garbage.safetensors", "--config", "{src}"], 2, "garbage.safetensors"),
    ("source-pickle", ["{images}/model.ckpt"], 2, "--allow-pickle"),
    ("output-under-a-file", ["{src}", "--output", "{images}/text.png/model"], 2, "cannot create"),
    ("output-exists", ["{src}", "--output", "{out}/made"], 2, "--force"),
    ("config-missing", ["{src}", "--config", "{out}/nowhere"], 2, "--config"),
    ("lora-scale-nan", ["{src}", "--lora-scale", "nan"], 2, "--lora-scale"),
    ("lora-scale-text", ["{src}", "--lora-scale", "big"], 2, "--lora-scale"),
    ("calibration-samples-0", ["{src}", "--quantize", "hybrid", "--calibration-samples", "0"], 2, "--calibration-samples"),
    ("unknown-flag", ["{src}", "--bogus"], 2, "--bogus"),
    ("into-without-tiny-vae", ["--into", "{out}/made"], 2, "--tiny-vae"),
]


def _safetensors_of(folder: Path, component: str) -> Path:
    return next((folder / component).glob("*.safetensors"))


# (id, change to a copy of the tiny diffusers folder (d; o: the other model's), needle)
CONVERT_FOLDERS = [
    ("model-index-not-json", lambda d, o: (d / "model_index.json").write_text("{oops"), "not valid JSON"),
    ("model-index-a-list", lambda d, o: (d / "model_index.json").write_text("[]"), "JSON object"),
    ("unet-config-not-json", lambda d, o: (d / "unet" / "config.json").write_text("{oops"), "not valid JSON"),
    ("unet-config-missing", lambda d, o: (d / "unet" / "config.json").unlink(), "unet/config.json is missing"),
    ("unet-negative-channels", lambda d, o: _json_set(d / "unet" / "config.json", in_channels=-4), "in_channels"),
    ("unet-huge-sample-size", lambda d, o: _json_set(d / "unet" / "config.json", sample_size=10**9), "sample_size"),
    ("unet-weights-cut-in-half", lambda d, o: _halve(_safetensors_of(d, "unet")), "unet: cannot load"),
    ("unet-weights-empty", lambda d, o: _safetensors_of(d, "unet").write_bytes(b""), "unet: cannot load"),
    ("unet-weights-missing", lambda d, o: _safetensors_of(d, "unet").unlink(), "no weights"),
    ("unet-weights-pickled", lambda d, o: _safetensors_of(d, "unet").rename(d / "unet" / "diffusion_pytorch_model.bin"), "--allow-pickle"),
    ("text-encoder-weights-cut-in-half", lambda d, o: _halve(_safetensors_of(d, "text_encoder")), "text_encoder: cannot load"),
    ("vae-weights-cut-in-half", lambda d, o: _halve(_safetensors_of(d, "vae")), "vae: cannot load"),
    ("unet-from-another-model", lambda d, o: _swap(d, o, "unet"), "a UNet from another model"),
    ("text-encoder-from-another-model", lambda d, o: _swap(d, o, "text_encoder"), "hidden_size 48"),
    ("vae-from-another-model", lambda d, o: _swap(d, o, "vae"), "8 latent channels"),
    ("tokenizer-files-missing", lambda d, o: [f.unlink() for f in (d / "tokenizer").iterdir()], "tokenizer is missing"),
    ("tokenizer-folder-missing", lambda d, o: shutil.rmtree(d / "tokenizer"), "tokenizer"),
    ("scheduler-not-json", lambda d, o: (d / "scheduler" / "scheduler_config.json").write_text("{oops"), "not valid JSON"),
    ("scheduler-timesteps-10^12", lambda d, o: _json_set(d / "scheduler" / "scheduler_config.json", num_train_timesteps=10**12), "num_train_timesteps"),
    ("scheduler-beta-end-below-start", lambda d, o: _json_set(d / "scheduler" / "scheduler_config.json", beta_end=0.0001, beta_start=0.1), "beta_start"),
    ("text-encoder-config-missing", lambda d, o: (d / "text_encoder" / "config.json").unlink(), "text_encoder/config.json"),
]


@pytest.fixture
def convert_files(tiny_eps, images, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_eps.diffusers_dir, src)
    out = tmp_path / "out"
    (out / "made").mkdir(parents=True)
    for name in ("zero.safetensors",):
        (images / name).write_bytes(b"")
    (images / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage" * 10)
    (images / "model.ckpt").write_bytes(b"not really a pickle")
    return src, out


@pytest.mark.parametrize("args,code,needle", [c[1:] for c in CONVERT_FLAGS], ids=[f"convert-{c[0]}" for c in CONVERT_FLAGS])
def test_convert_bad_flags(convert_files, images, tmp_path, args, code, needle):
    src, out = convert_files
    before = listing(out), listing(images)
    filled = [a.format(src=src, out=out, images=images) for a in args]
    if "--output" not in filled and "--into" not in filled and filled and filled[0]:
        filled += ["--output", str(out / "converted")]
    assert_refused(invoke("convert", *filled, "--quiet"), code, needle)
    assert (listing(out), listing(images)) == before


@pytest.mark.parametrize("change,needle", [c[1:] for c in CONVERT_FOLDERS], ids=[f"convert-folder-{c[0]}" for c in CONVERT_FOLDERS])
def test_convert_broken_or_mismatched_folders(convert_files, other_model, change, needle):
    src, out = convert_files
    change(src, other_model.diffusers_dir)
    before = listing(out)
    assert_refused(invoke("convert", src, "--output", out / "converted", "--weight-format", "fp32", "--quiet"), 2, needle)
    assert listing(out) == before


# --- batch ------------------------------------------------------------------------------

def batch_args(model, file, out: Path) -> list:
    return ["batch", file, "--output-dir", out, "--model", model.ov_dir, "--width", "64", "--height", "64",
            "--steps", "1", "--seed", "1", "--quiet"]


# (id, prompts file name and content (None: not created), extra flags, needle); all exit 2
BATCH_REFUSED = [
    ("file-missing", ("missing.txt", None), [], "not found"),
    ("file-is-a-folder", ("folder.txt", "<folder>"), [], "is a folder"),
    ("file-unknown-extension", ("prompts.xml", "a fox\n"), [], "cannot tell the format"),
    ("format-unknown", ("prompts.txt", "a fox\n"), ["--format", "xml"], "--format"),
    ("file-not-utf8", ("prompts.txt", b"a fox \xff\xfe\n"), [], "not UTF-8"),
    ("csv-empty", ("prompts.csv", ""), [], "empty CSV"),
    ("csv-no-prompt-column", ("prompts.csv", "seed,steps\n1,2\n"), [], "'prompt' column"),
    ("csv-unknown-column", ("prompts.csv", "prompt,colour\nfox,red\n"), [], "colour"),
    ("csv-column-twice", ("prompts.csv", "prompt,seed,seed\nfox,1,2\n"), [], "twice"),
    ("steps-0", ("prompts.txt", "a fox\n"), ["--steps", "0"], "--steps"),
    ("width-65", ("prompts.txt", "a fox\n"), ["--width", "65"], "--width"),
    ("guidance-nan", ("prompts.txt", "a fox\n"), ["--guidance-scale", "nan"], "--guidance-scale"),
    ("strength-2", ("prompts.txt", "a fox\n"), ["--strength", "2"], "--strength"),
    ("seed-negative", ("prompts.txt", "a fox\n"), ["--seed", "-1"], "--seed"),
    ("precision-unknown", ("prompts.txt", "a fox\n"), ["--precision", "f8"], "--precision"),
    ("rng-unknown", ("prompts.txt", "a fox\n"), ["--rng", "dice"], "--rng"),
    ("model-missing", ("prompts.txt", "a fox\n"), ["--model", "{tmp}/nowhere"], "not found"),
    ("model-broken-config", ("prompts.txt", "a fox\n"), ["--model", "{broken}"], "sample_size"),
    ("model-broken-tokenizer", ("prompts.txt", "a fox\n"), ["--model", "{broken_tokenizer}"], "tokenizer"),
    ("init-image-empty", ("prompts.txt", "a fox\n"), ["--init-image", "{images}/zero-bytes.png"], "empty"),
    ("init-image-huge", ("prompts.txt", "a fox\n"), ["--init-image", "{images}/huge.png"], "100000x100000"),
    ("size-too-large-for-memory", ("prompts.txt", "a fox\n"), ["--width", "8000000"], "GB of memory"),
    ("output-dir-under-a-file", ("prompts.txt", "a fox\n"), ["--output-dir", "{images}/text.png/out"], "--output-dir"),
    ("ray-options-without-ray", ("prompts.txt", "a fox\n"), ["--shared-output"], "--ray"),
]


@pytest.fixture
def batch_models(tiny_eps, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_eps.ov_dir, broken)
    _json_set(broken / "unet" / "config.json", sample_size=-1)
    broken_tokenizer = tmp_path / "broken-tokenizer"
    shutil.copytree(tiny_eps.ov_dir, broken_tokenizer)
    (broken_tokenizer / "tokenizer" / "tokenizer.json").write_text("{garbage")
    return {"broken": broken, "broken_tokenizer": broken_tokenizer}


@pytest.mark.parametrize("file,extra,needle", [c[1:] for c in BATCH_REFUSED], ids=[f"batch-{c[0]}" for c in BATCH_REFUSED])
def test_batch_refused_before_anything_is_written(tiny_eps, images, batch_models, tmp_path, file, extra, needle):
    name, content = file
    path = tmp_path / "input" / name
    path.parent.mkdir()
    if content == "<folder>":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    filled = [a.format(tmp=tmp_path, images=images, **batch_models) for a in extra]
    assert_refused(invoke(*batch_args(tiny_eps, path, out), *filled), 2, needle)
    assert not out.exists()


# (id, JSONL row, needle): each row fails alone (exit 1), the good rows are made
BATCH_ROWS = [
    ("prompt-empty", {"prompt": "  "}, "empty prompt"),
    ("prompt-a-number", {"prompt": 5}, "prompt must be text"),
    ("prompt-lone-surrogate", '{"prompt": "a \\ud800 fox"}', "surrogate"),
    ("prompt-weight-huge", {"prompt": "(fox:" + "9" * 45 + ")"}, "emphasis weight"),
    ("steps-text", {"prompt": "fox", "steps": "many"}, "steps"),
    ("steps-0", {"prompt": "fox", "steps": 0}, "steps"),
    ("steps-true", {"prompt": "fox", "steps": True}, "steps"),
    ("width-65", {"prompt": "fox", "width": 65}, "width"),
    ("width-too-large-for-memory", {"prompt": "fox", "width": 8_000_000}, "GB of memory"),
    ("guidance-nan", '{"prompt": "fox", "guidance_scale": NaN}', "guidance_scale"),
    ("guidance-above-100", {"prompt": "fox", "guidance_scale": 1000}, "guidance_scale"),
    ("strength-2", {"prompt": "fox", "strength": 2, "init_image": "img.png"}, "strength"),
    ("seed-negative", {"prompt": "fox", "seed": -1}, "seed"),
    ("seed-2^64", {"prompt": "fox", "seed": 2**64}, "seed"),
    ("scheduler-unknown", {"prompt": "fox", "scheduler": "nope"}, "scheduler"),
    ("name-escapes", {"prompt": "fox", "name": "../escape.png"}, "is a path"),
    ("name-absolute", {"prompt": "fox", "name": "/tmp/escape.png"}, "is a path"),
    ("name-hidden", {"prompt": "fox", "name": ".hidden.png"}, "start with '.'"),
    ("name-empty", {"prompt": "fox", "name": "  "}, "name is empty"),
    ("name-control-characters", {"prompt": "fox", "name": "a\u0000b"}, "control characters"),
    ("init-image-text-file", {"prompt": "fox", "init_image": "notes.png", "strength": 1}, "cannot read"),
    ("init-image-huge", {"prompt": "fox", "init_image": "huge.png", "strength": 1}, "100000x100000"),
    ("init-image-missing", {"prompt": "fox", "init_image": "nowhere.png", "strength": 1}, "not found"),
    ("unknown-key", {"prompt": "fox", "colour": "red"}, "unknown key"),
    ("not-an-object", "[1, 2]", "JSON object"),
    ("not-json", "{prompt: fox", "invalid JSON"),
]


def test_batch_bad_rows_fail_alone(tiny_eps, images, tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    shutil.copy(images / "text.png", folder / "notes.png")
    shutil.copy(images / "huge.png", folder / "huge.png")
    shutil.copy(images / "rgb.png", folder / "img.png")
    lines = [json.dumps({"prompt": "a good fox", "name": "good"})]
    for _, row, _ in BATCH_ROWS:
        lines.append(row if isinstance(row, str) else json.dumps(row))
    file = folder / "rows.jsonl"
    file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = invoke(*batch_args(tiny_eps, file, out))
    assert uncaught(result) is None, result.output
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("sdcli: error:")]
    for number, (case, _, needle) in enumerate(BATCH_ROWS, start=2):
        mine = [e for e in errors if f"rows.jsonl:{number}:" in e]
        assert len(mine) == 1 and needle.lower() in mine[0].lower(), (case, mine, result.stderr)
    assert f"1 done, {len(BATCH_ROWS)} failed" in result.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["good.png", "manifest.jsonl"]
    assert not (tmp_path / "escape.png").exists() and not Path("/tmp/escape.png").exists()
