"""Model upscalers (issue 23): `sdcli convert` of ESRGAN-family checkpoints through spandrel into
IRs with dynamic height and width, and `sdcli upscale` with A1111's tiling.

Each architecture is built tiny with random weights from spandrel's own classes and saved with
its real tensor names (sdcli/convert/random_upscaler.py), converted by `sdcli convert`, and its
IR compared with spandrel's torch model (ImageModelDescriptor call: padding to the size
requirements, clamp) at f32: relative error (max |IR - torch| / max |torch|) at most 1e-4.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app

ARCHS = ("esrgan", "compact", "span", "swinir", "hat")
REL_TOL = 1e-4


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdcli: error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="session")
def upscalers(tmp_path_factory):
    """{kind: (checkpoint, converted folder)}, all converted by `sdcli convert` (fp32)."""
    from sdcli.convert.random_upscaler import save

    root = tmp_path_factory.mktemp("upscalers")
    folder = root / "ESRGAN"
    out = {}
    for kind in ARCHS:
        checkpoint = save(kind, root / "src" / f"tiny-{kind}.safetensors")
        result = invoke("convert", checkpoint, "--weight-format", "fp32", "--upscaler-dir", folder, "--quiet")
        assert result.exit_code == 0, result.output
        out[kind] = (checkpoint, folder / f"tiny-{kind}")
    return folder, out


@pytest.fixture(scope="session")
def runtime():
    from sdcli.runtime.core import Runtime

    return Runtime("CPU", "f32", None)


def spandrel_model(checkpoint):
    from sdcli.convert.spandrel_import import import_spandrel

    return import_spandrel().ModelLoader().load_from_file(str(checkpoint)).eval()


def ir_upscaler(folder, runtime, bgr=True):
    from sdcli.engine.upscale import ModelUpscaler
    from sdcli.model.upscalers import UpscalerFolder

    return ModelUpscaler(UpscalerFolder.open(folder), runtime, "f32", bgr)


@pytest.mark.parametrize("kind", ARCHS)
def test_ir_matches_spandrel(upscalers, runtime, kind):
    import torch

    _, made = upscalers
    checkpoint, folder = made[kind]
    info = json.loads((folder / "upscaler.json").read_text())
    reference = spandrel_model(checkpoint)
    assert info["scale"] == reference.scale and info["architecture"] == reference.architecture.name
    ours = ir_upscaler(folder, runtime)
    rng = np.random.default_rng(0)
    # odd sizes (not a multiple of any window), one under SwinIR's and HAT's minimum of 16 (padded)
    worst, moved = 0.0, None
    for h, w in ((21, 27), (13, 18)):
        x = rng.random((1, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            want = reference(torch.from_numpy(x.copy())).numpy()
        got = ours.run(x)
        assert got.shape == want.shape == (1, 3, h * info["scale"], w * info["scale"])
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
        other = ours.run(rng.random((1, 3, h, w), dtype=np.float32))
        moved = float(np.abs(other - got).max() / np.abs(want).max())
        assert moved > 100 * REL_TOL, f"another input moved {kind}'s output by only {moved:.2e}"
    print(f"upscaler IR vs spandrel, {kind}: relative error {worst:.2e} (another input moves it {moved:.2f})")
    assert worst <= REL_TOL


def test_a1111_tiling_matches_torch_pipeline(upscalers, runtime):
    """The whole of `upscale` (grid, BGR, rounding, blend, passes, Lanczos) with the IR against the
    same A1111 steps around spandrel's torch model; and tiled against untiled."""
    import torch
    from PIL import Image

    from sdcli.engine import upscale as up

    _, made = upscalers
    checkpoint, folder = made["compact"]
    reference = spandrel_model(checkpoint)

    def torch_patch(image):  # A1111's upscale_pil_patch
        x = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)) / 255
        with torch.no_grad():
            y = reference(torch.from_numpy(x).unsqueeze(0).float())[0].clamp(0, 1).numpy()
        arr = (255.0 * np.moveaxis(y, 0, 2)).round().astype(np.uint8)[:, :, ::-1]
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")

    class TorchUpscaler:
        def __call__(self, image):
            return torch_patch(image)

    image = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    ours = ir_upscaler(folder, runtime)
    tiled = up.upscale(image, ours, 2, tile=32, overlap=8)
    torch_tiled = up.upscale(image, TorchUpscaler(), 2, tile=32, overlap=8)
    assert tiled.shape == (96, 136, 3)  # 100x140 down to multiples of 8, as A1111
    diff = np.abs(tiled.astype(int) - torch_tiled.astype(int)).max()
    assert diff <= 1, diff
    untiled = up.upscale(image, ours, 2, tile=0)
    seams = np.abs(tiled.astype(int) - untiled.astype(int))
    print(f"upscale tiled (32/8) vs torch pipeline: max {diff}; tiled vs untiled: max {seams.max()} "
               f"mean {seams.mean():.3f}")
    # the tiles' borders see black or a cut where the whole image has pixels: small, not zero
    assert 0 < seams.mean() <= 2.0 and seams.max() <= 64
    other = up.upscale(image[::-1].copy(), ours, 2, tile=32, overlap=8)
    assert np.abs(other.astype(int) - tiled.astype(int)).mean() > 10  # another image moves it
    # scale 2 from a 4x model: the model's 4x output resized with Lanczos, as A1111
    four = up.upscale_with_model(ours, Image.fromarray(image), 32, 8)
    assert four.size == (280, 200)
    lanczos = np.asarray(four.resize((136, 96), resample=Image.Resampling.LANCZOS))
    assert np.array_equal(lanczos, tiled)


def test_grid_tile_larger_than_image_pads_black_as_a1111():
    from PIL import Image

    from sdcli.engine.upscale import split_grid

    image = Image.fromarray(np.full((20, 30, 3), 200, np.uint8))
    grid = split_grid(image, 32, 32, 8)
    (y, _, row), = grid.tiles
    (x, _, tile), = row
    assert (x, y) == (-2, -12)  # w - tile_w, h - tile_h: PIL's crop fills outside with black
    pixels = np.asarray(tile)
    assert pixels[:12].max() == 0 and pixels[12:, 2:].min() == 200


def test_builtin_lanczos_and_nearest():
    from PIL import Image

    from sdcli.engine import upscale as up

    image = (np.random.default_rng(2).random((24, 40, 3)) * 255).astype(np.uint8)
    lanczos = Image.Resampling.LANCZOS
    got = up.upscale(image, "Lanczos", 2.5)  # 100x60, then (A1111's target) 96x56, both by Lanczos
    want = Image.fromarray(image).resize((100, 60), resample=lanczos).resize((96, 56), resample=lanczos)
    assert np.array_equal(got, np.asarray(want))
    assert np.array_equal(up.upscale(image, "Lanczos", 3),
                          np.asarray(Image.fromarray(image).resize((120, 72), resample=lanczos)))
    nearest = up.upscale(image, "Nearest", 2)
    assert np.array_equal(nearest, image.repeat(2, 0).repeat(2, 1))


def test_cli_upscale_files_json(upscalers, tmp_path):
    import cv2

    folder, _ = upscalers
    files = []
    for i in range(2):
        files.append(tmp_path / f"in{i}.png")
        cv2.imwrite(str(files[-1]), (np.random.default_rng(i).random((40, 24, 3)) * 255).astype(np.uint8))
    result = invoke("upscale", *files, "--upscaler", "tiny-span", "--scale", "2", "--upscaler-dir", folder,
                    "--output-dir", tmp_path / "out", "--json", "--tile", "16", "--tile-overlap", "4",
                    "--precision", "f32")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(tmp_path / "out" / f"in{i}-x2.png") for i in range(2)]
    assert all(r["width"] == 48 and r["height"] == 80 and r["tiles"] == 6 for r in rows)
    a, b = (cv2.imread(r["path"]) for r in rows)
    assert a.shape == (80, 48, 3) and np.abs(a.astype(int) - b.astype(int)).mean() > 10
    assert not list((tmp_path / "out").glob(".*part"))


def test_cli_bad_input(upscalers, tmp_path):
    import cv2

    folder, made = upscalers
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "out"
    line = one_line_error(invoke("upscale", image, "--upscaler", "nothere", "--upscaler-dir", folder,
                                 "--output-dir", out))
    assert "nothere" in line and str(folder) in line
    for scale in ("1", "0.5", "-2"):
        assert "--scale" in one_line_error(invoke("upscale", image, "--upscaler", "Lanczos", "--scale", scale,
                                                  "--output-dir", out))
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert "broken.png" in one_line_error(invoke("upscale", image, broken, "--upscaler", "Lanczos",
                                                 "--output-dir", out))
    assert not out.exists()  # nothing written, not even the readable first image
    # a pickle is refused without --allow-pickle, converted with it (sdcli's tensor-only unpickler)
    from sdcli.convert.random_upscaler import save

    pth = save("compact", tmp_path / "tiny-compact.pth")
    line = one_line_error(invoke("convert", pth, "--upscaler-dir", tmp_path / "ups"))
    assert "--allow-pickle" in line and not (tmp_path / "ups").exists()
    result = invoke("convert", pth, "--upscaler-dir", tmp_path / "ups", "--allow-pickle", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ups" / "tiny-compact" / "upscaler.json").read_text())["architecture_id"] == "Compact"
    # a file that is neither a diffusion checkpoint nor an upscaler spandrel knows
    from safetensors.numpy import save_file

    odd = tmp_path / "odd.safetensors"
    save_file({"something.weight": np.zeros((2, 2), np.float32)}, str(odd))
    assert "spandrel" in one_line_error(invoke("convert", odd, "--upscaler-dir", tmp_path / "ups2"))
    assert not (tmp_path / "ups2").exists()


def test_api_upscalers_and_extras(upscalers, tiny_eps, monkeypatch):
    """/sdapi/v1/upscalers and /sdapi/v1/extra-single-image / extra-batch-images on `sdcli serve`'s
    app, in A1111's shapes: the image is `sdcli upscale`'s."""
    import base64

    from fastapi.testclient import TestClient

    from sdcli.engine import upscale as up
    from sdcli.imaging.image_io import encode_png
    from sdcli.runtime.core import Runtime
    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker

    folder, _ = upscalers
    monkeypatch.setenv("SDCLI_UPSCALER_DIR", str(folder))
    worker = Worker(ModelRegistry(tiny_eps.ov_dir.parent, tiny_eps.ov_dir), tiny_eps.ov_dir.name)  # not started
    client = TestClient(create_app(worker))
    listed = {item["name"]: item for item in client.get("/sdapi/v1/upscalers").json()}
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    assert listed["tiny-compact"]["scale"] == 4 and listed["tiny-span"]["scale"] == 2

    image = (np.random.default_rng(4).random((40, 24, 3)) * 255).astype(np.uint8)
    encoded = base64.b64encode(encode_png(image)).decode()

    def decode(text):
        import cv2

        return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    r = client.post("/sdapi/v1/extra-single-image", json={"image": encoded, "upscaler_1": "tiny-compact",
                                                         "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    got = decode(r.json()["image"])
    want = up.upscale(image, up.resolve("tiny-compact", Runtime("CPU", "auto", None)), 2)
    assert got.shape == (80, 48, 3) and np.array_equal(got, want)
    assert "Postprocess upscaler: tiny-compact" in r.json()["html_info"]
    r = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": encoded, "name": "a.png"}, {"data": encoded, "name": "b.png"}],
        "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64})
    assert r.status_code == 200, r.text
    assert [decode(i).shape for i in r.json()["images"]] == [(64, 64, 3)] * 2  # cover, then crop about the centre
    for fields, field in (({"upscaler_1": "nothere"}, "upscaler_1"), ({"upscaling_resize": 1}, "upscaling_resize"),
                          ({"gfpgan_visibility": 0.5}, "gfpgan_visibility"), ({"image": "%%%"}, "image")):
        r = client.post("/sdapi/v1/extra-single-image", json={"image": encoded, "upscaler_1": "Lanczos", **fields})
        assert r.status_code == 422 and r.json()["field"] == field, r.text
