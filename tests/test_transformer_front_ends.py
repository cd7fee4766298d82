"""The flow-matching transformers (FLUX.2-klein, Z-Image) through `sdcli batch` and `sdcli serve`'s
A1111 API: a batch row's picture is `sdcli generate`'s for the same settings (max 0), FLUX.2-klein's
reference images (--reference-image, a row's reference_images) and Z-Image's img2img strength in
batch rows, resumed as any batch is; txt2img and img2img over the A1111 API give generate's pictures
with A1111's infotext.  Each varied input (a reference, the strength) moves the picture by more than
2 of 255.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.models import smooth_picture
from tests.reference import sdcli_pixels

PROMPT = "turn the sky red"
SEED = 1234
WIDTH, HEIGHT = 64, 48
Z_STEPS = 4  # Z-Image (its folder's default is 9): fewer, to keep these cheap
TOLERANCE = 2


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Reference A 100x70, reference B 70x90, and a 64x48 init image (RGB PNGs), in one folder."""
    from sdcli.imaging.image_io import save_png

    folder = tmp_path_factory.mktemp("front-end-images")
    save_png(folder / "ref-a.png", smooth_picture(100, 70))
    save_png(folder / "ref-b.png", np.ascontiguousarray(255 - smooth_picture(70, 90)[::-1, ::-1]))
    save_png(folder / "init.png", smooth_picture(WIDTH, HEIGHT))
    return folder


_GENERATED: dict = {}


def generated(folder, tmp_path, *flags) -> np.ndarray:
    """`sdcli generate` at 64x48, seed 1234, torch noise, f32, the folder's steps (once per flags)."""
    key = (str(folder), tuple(map(str, flags)))
    if key not in _GENERATED:
        _GENERATED[key] = sdcli_pixels(folder, tmp_path / f"generated-{len(_GENERATED)}.png", *flags, prompt=PROMPT,
                                       steps=None, negative=None, width=WIDTH, height=HEIGHT, seed=SEED)
    return _GENERATED[key]


def run_batch(rows_file, out, folder, *flags):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    return CliRunner().invoke(app, ["batch", str(rows_file), "--output-dir", str(out), "--model", str(folder),
                                    "--width", str(WIDTH), "--height", str(HEIGHT), "--rng", "torch", "--precision",
                                    "f32", "--parallel", "1", *map(str, flags)])


def pixels(path) -> np.ndarray:
    from sdcli.imaging.image_io import read_rgb

    return read_rgb(path).astype(np.int16)


def largest(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def log_moved(parity_log, model: str, what: str, a: np.ndarray, b: np.ndarray) -> int:
    """How far `b` is from `a` (max), logged in the parity table."""
    diff = np.abs(a - b)
    parity_log.append({"model": model, "scheduler": "flow_euler", "mode": what, "size": f"{WIDTH}x{HEIGHT}",
                       "max": int(diff.max()), "mean": float(diff.mean())})
    return int(diff.max())


def write_rows(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({"prompt": PROMPT, "seed": SEED, **row}) + "\n" for row in rows))


# --- sdcli batch ----------------------------------------------------------------------------------


def test_batch_rows_take_reference_images_and_resume(tiny_klein, pictures, tmp_path, parity_log):
    """A row's reference_images (relative to FILE's folder) and the command line's --reference-image
    for the rows without: each row is generate's picture; a re-run skips them all; a changed
    reference makes its rows again."""
    folder = tiny_klein[1]
    rows = pictures / "klein-rows.jsonl"
    write_rows(rows, [{"name": "a.png", "reference_images": ["ref-a.png"]},
                      {"name": "b.png"},  # the command line's reference (B)
                      {"name": "none.png", "reference_images": []}])
    out = tmp_path / "out"
    result = run_batch(rows, out, folder, "--reference-image", pictures / "ref-b.png")
    assert result.exit_code == 0, result.output
    assert "3 done, 0 failed, 0 skipped" in result.output
    with_a = generated(folder, tmp_path, "--reference-image", pictures / "ref-a.png")
    with_b = generated(folder, tmp_path, "--reference-image", pictures / "ref-b.png")
    assert largest(pixels(out / "a.png"), with_a) == 0
    assert largest(pixels(out / "b.png"), with_b) == 0
    assert largest(pixels(out / "none.png"), generated(folder, tmp_path)) == 0
    from sdcli.imaging.image_io import read_png_text

    assert "Reference images: ref-a.png," in read_png_text(out / "a.png")["parameters"]
    moved = log_moved(parity_log, "flux2-klein", "batch: reference A moves it by", pixels(out / "a.png"),
                      pixels(out / "none.png"))
    assert moved > TOLERANCE and largest(with_a, with_b) > TOLERANCE

    again = run_batch(rows, out, folder, "--reference-image", pictures / "ref-b.png")
    assert again.exit_code == 0 and "0 done, 0 failed, 3 skipped" in again.output, again.output
    other = run_batch(rows, out, folder, "--reference-image", pictures / "ref-a.png")  # row b's reference changed
    assert other.exit_code == 0 and "1 done, 0 failed, 2 skipped" in other.output, other.output
    assert largest(pixels(out / "b.png"), with_a) == 0


def test_batch_z_image_img2img_rows_take_their_strength(tiny_z_image, pictures, tmp_path, parity_log):
    folder = tiny_z_image[1]
    rows = pictures / "z-rows.csv"
    rows.write_text(f"prompt,seed,init_image,strength,name\n{PROMPT},{SEED},init.png,0.6,s6.png\n"
                    f"{PROMPT},{SEED},init.png,0.3,s3.png\n")
    out = tmp_path / "out"
    result = run_batch(rows, out, folder, "--steps", Z_STEPS)
    assert result.exit_code == 0, result.output
    for strength in (0.6, 0.3):
        made = generated(folder, tmp_path, "--steps", Z_STEPS, "--init-image", pictures / "init.png",
                         "--strength", strength)
        assert largest(pixels(out / f"s{int(strength * 10)}.png"), made) == 0
    moved = log_moved(parity_log, "z-image", "batch: strength 0.3 vs 0.6 moves it by", pixels(out / "s6.png"),
                      pixels(out / "s3.png"))
    assert moved > TOLERANCE
    again = run_batch(rows, out, folder, "--steps", Z_STEPS)
    assert again.exit_code == 0 and "0 done, 0 failed, 2 skipped" in again.output, again.output


@pytest.mark.parametrize("case", ["reference on z-image", "unreadable reference", "init image on klein",
                                  "deepcache on klein", "clip skip on z-image", "scheduler on z-image"])
def test_batch_options_a_transformer_refuses_are_one_line(tiny_klein, tiny_z_image, pictures, tmp_path, case):
    """Command-line options the model refuses whatever the row: one line, exit 2, nothing written."""
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    klein, z_image = tiny_klein[1], tiny_z_image[1]
    folder, flags, message = {
        "reference on z-image": (z_image, ["--reference-image", pictures / "ref-a.png"],
                                 "--reference-image is for FLUX.2-klein models"),
        "unreadable reference": (klein, ["--reference-image", broken], "--reference-image: cannot read"),
        "init image on klein": (klein, ["--init-image", pictures / "init.png"], "use --reference-image"),
        "deepcache on klein": (klein, ["--deepcache", "2"], "--deepcache is for UNet models"),
        "clip skip on z-image": (z_image, ["--clip-skip", "2"], "--clip-skip is for CLIP text encoders"),
        "scheduler on z-image": (z_image, ["--scheduler", "ddim"], "flow-matching Euler scheduler only"),
    }[case]
    rows = tmp_path / "rows.txt"
    rows.write_text(PROMPT + "\n")
    out = tmp_path / "out"
    result = run_batch(rows, out, folder, *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() or not any(out.iterdir())


def test_a_row_s_unreadable_reference_fails_that_row(tiny_klein, pictures, tmp_path):
    rows = tmp_path / "rows.jsonl"
    (tmp_path / "broken.png").write_text("not a picture")
    write_rows(rows, [{"name": "bad.png", "reference_images": "broken.png|" + str(pictures / "ref-a.png")}])
    out = tmp_path / "out"
    result = run_batch(rows, out, tiny_klein[1], "--quiet")
    assert result.exit_code == 1, result.output
    assert "reference_images: cannot read" in result.output
    assert not (out / "bad.png").exists()


# --- sdcli serve: the A1111 API -------------------------------------------------------------------


def served(folder, route: str, body: dict) -> tuple[np.ndarray, dict, dict]:
    """(picture, info, response) of one A1111 API call on an in-process server of `folder`."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker

    worker = Worker(ModelRegistry(None, folder), folder.name, queue_size=2, precision="f32")
    worker.start()
    try:
        r = TestClient(create_app(worker)).post(f"/sdapi/v1/{route}", json={
            "prompt": PROMPT, "seed": SEED, "width": WIDTH, "height": HEIGHT, **body})
    finally:
        worker.stop()
        worker.join(30)
    assert r.status_code == 200, r.text
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))
    return picture.astype(np.int16), json.loads(r.json()["info"]), r.json()


def check_a1111_info(info: dict, steps: int, model: str) -> dict:
    """The info of A1111's Processed.js() with a flow-matching model's values; the infotext's fields."""
    from sdcli.imaging.params import parse_parameters

    assert {"prompt", "all_prompts", "seed", "all_seeds", "width", "height", "sampler_name", "cfg_scale", "steps",
            "infotexts", "extra_generation_params", "sd_model_name", "denoising_strength"} <= set(info)
    assert (info["seed"], info["width"], info["height"], info["steps"]) == (SEED, WIDTH, HEIGHT, steps)
    assert info["sampler_name"] == "Euler"
    prompt, _, fields = parse_parameters(info["infotexts"][0])
    assert prompt == PROMPT
    assert fields["Sampler"] == "Euler" and fields["Schedule type"] == "Simple"
    assert (fields["Steps"], fields["Seed"], fields["Size"], fields["Model"]) == (str(steps), str(SEED),
                                                                                  f"{WIDTH}x{HEIGHT}", model)
    assert info["extra_generation_params"]["Schedule type"] == "Simple"
    return fields


def test_serve_txt2img_on_klein_is_generate_s_picture(tiny_klein, tmp_path):
    folder = tiny_klein[1]
    picture, info, response = served(folder, "txt2img", {})
    assert largest(picture, generated(folder, tmp_path)) == 0
    fields = check_a1111_info(info, 4, folder.name)
    assert fields["CFG scale"] == "1" and response["parameters"]["prompt"] == PROMPT


def test_serve_txt2img_and_img2img_on_z_image(tiny_z_image, pictures, tmp_path, parity_log):
    """txt2img is generate's picture; img2img's denoising_strength is generate's --strength (and moves it)."""
    from sdcli.imaging.image_io import encode_png, read_rgb

    folder = tiny_z_image[1]
    picture, info, _ = served(folder, "txt2img", {"steps": Z_STEPS})
    assert largest(picture, generated(folder, tmp_path, "--steps", Z_STEPS)) == 0
    check_a1111_info(info, Z_STEPS, folder.name)
    init = base64.b64encode(encode_png(read_rgb(pictures / "init.png"))).decode()
    edited, info, _ = served(folder, "img2img", {"steps": Z_STEPS, "init_images": [init], "denoising_strength": 0.6})
    made = generated(folder, tmp_path, "--steps", Z_STEPS, "--init-image", pictures / "init.png", "--strength", 0.6)
    assert largest(edited, made) == 0
    fields = check_a1111_info(info, Z_STEPS, folder.name)
    assert info["denoising_strength"] == 0.6 and fields["Denoising strength"] == "0.6"
    lower = generated(folder, tmp_path, "--steps", Z_STEPS, "--init-image", pictures / "init.png", "--strength", 0.3)
    moved = log_moved(parity_log, "z-image", "serve: img2img 0.6 vs 0.3 moves it by", edited, lower)
    assert moved > TOLERANCE
