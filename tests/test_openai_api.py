"""OpenAI's images API on a real `sdcli serve` process (one for the module, with --api-key),
driven by the official `openai` client: generations (b64_json, url, jpeg, n, size), edits with a
mask (and with the image's own transparency), variations, the models list, progress and
interrupt through A1111's routes (one queue), and OpenAI's errors
(401 a wrong key, 404 an unknown model or route, 400 a bad size or field, 413 a body too large).
The pixels: a generation equals `sdcli generate`'s image for the same prompt, seed, steps and
size; an edit and a variation equal the A1111 img2img route's image for what they mean."""
from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402

from tests.models import smooth_picture  # noqa: E402
from tests.servers import ServeProcess  # noqa: E402

KEY = "sk-test-key"
FAST = {"steps": 2}
TOLERANCE = 2  # of 255


class Server(ServeProcess):
    """tests/servers.py's server, with the official openai client."""

    def client(self, key: str = KEY) -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def models(tiny_eps, tmp_path_factory):
    root = tmp_path_factory.mktemp("openai-models")
    shutil.copytree(tiny_eps.ov_dir, root / "tiny-a")
    return root


@pytest.fixture(scope="module")
def server(models):
    server = Server("--model", models / "tiny-a", "--models-dir", models, env={"SDCLI_API_KEY": KEY})
    yield server
    server.stop()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def png_bytes(image: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image, mode).save(out, "PNG")
    return out.getvalue()


def diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def b64_image(response, i: int = 0) -> bytes:
    return base64.b64decode(response.data[i].b64_json)


@pytest.fixture(scope="module")
def fox(server):
    """The served image of one prompt, seed and size (b64_json, the server's model by name)."""
    r = server.client().images.generate(model="tiny-a", prompt="a red fox, at dawn", size="64x64",
                                        response_format="b64_json", extra_body={"seed": 7, **FAST})
    assert len(r.data) == 1 and r.size == "64x64" and r.output_format == "png"
    return b64_image(r)


def test_generation_gives_generate_s_pixels_and_the_prompt_moves_them(server, models, fox, tmp_path):
    out = tmp_path / "cli.png"
    cli = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", str(models / "tiny-a"),
                          "--prompt", "a red fox, at dawn", "--seed", "7", "--steps", "2", "--width", "64",
                          "--height", "64", "--output", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    parity = diff(pixels(fox), pixels(out.read_bytes()))
    parameters = Image.open(io.BytesIO(fox)).info["parameters"]
    assert parameters == Image.open(out).info["parameters"] and "Seed: 7," in parameters
    other = b64_image(server.client().images.generate(model="tiny-a", prompt="a blue boat on a lake", size="64x64",
                                                      extra_body={"seed": 7, **FAST}))
    moved = diff(pixels(other), pixels(fox))
    print(f"openai generation vs generate: max {parity}; another prompt moves it by {moved}")
    assert parity <= TOLERANCE < moved, (parity, moved)


def test_n_default_model_url_and_jpeg(server, fox):
    client = server.client()
    r = client.images.generate(prompt="a red fox, at dawn", n=2, size="64x64", extra_body={"seed": 7, **FAST})
    first, second = b64_image(r, 0), b64_image(r, 1)
    assert len(r.data) == 2 and np.array_equal(pixels(first), pixels(fox))  # no model: the server's; seed + i
    assert "Seed: 8," in Image.open(io.BytesIO(second)).info["parameters"] and diff(pixels(second), pixels(fox)) > 0

    r = client.images.generate(prompt="a red fox, at dawn", size="64x64", response_format="url",
                               extra_body={"seed": 7, **FAST})
    got = httpx.get(r.data[0].url, timeout=30)  # no key: the name is the secret
    assert r.data[0].b64_json is None and r.data[0].url.startswith(server.url + "/v1/images/files/")
    assert got.status_code == 200 and got.headers["content-type"] == "image/png" and got.content == fox

    r = client.images.generate(prompt="a red fox, at dawn", size="48x64", output_format="jpeg",
                               output_compression=90, extra_body={"seed": 7, **FAST})
    jpeg = Image.open(io.BytesIO(b64_image(r)))
    assert jpeg.format == "JPEG" and jpeg.size == (48, 64) and r.size == "48x64" and r.output_format == "jpeg"
    comment = jpeg.getexif().get_ifd(0x8769)[0x9286]
    assert comment.startswith(b"UNICODE\0") and "Seed: 7," in comment[8:].decode("utf-16-be")


def test_edit_repaints_the_mask_s_transparent_pixels(server, tmp_path):
    picture = smooth_picture(64, 64)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[16:48, 16:48] = 0  # transparent: repainted
    mask = np.dstack([np.zeros((64, 64, 3), np.uint8), alpha])
    client = server.client()
    r = client.images.edit(image=("photo.png", png_bytes(picture), "image/png"),
                           mask=("mask.png", png_bytes(mask, "RGBA"), "image/png"), prompt="a box", size="64x64",
                           extra_body={"seed": 3, **FAST})
    edited = pixels(b64_image(r))
    assert np.array_equal(edited[:4], picture[:4]) and diff(edited[24:40, 24:40], picture[24:40, 24:40]) > TOLERANCE

    # the same as A1111's inpainting with the mask's meaning turned around (white: repaint), strength 1
    white = np.where(alpha[..., None] == 0, 255, 0).astype(np.uint8).repeat(3, -1)
    a1111 = httpx.post(server.url + "/sdapi/v1/img2img", timeout=120, json={
        "prompt": "a box", "init_images": [base64.b64encode(png_bytes(picture)).decode()],
        "mask": base64.b64encode(png_bytes(white)).decode(), "denoising_strength": 1.0, "seed": 3,
        "width": 64, "height": 64, **FAST})
    assert a1111.status_code == 200, a1111.text
    assert diff(edited, pixels(base64.b64decode(a1111.json()["images"][0]))) == 0

    # no mask: the image's own transparent pixels are the ones repainted
    rgba = np.dstack([picture, alpha])
    r = client.images.edit(image=[("photo.png", png_bytes(rgba, "RGBA"), "image/png")], prompt="a box",
                           extra_body={"seed": 3, **FAST})
    assert diff(pixels(b64_image(r)), edited) == 0


def test_variation_is_image_to_image_with_an_empty_prompt(server):
    picture = smooth_picture(64, 64)
    r = server.client().images.create_variation(image=("photo.png", png_bytes(picture), "image/png"), n=1,
                                                size="64x64", extra_body={"seed": 5, **FAST})
    varied = pixels(b64_image(r))
    a1111 = httpx.post(server.url + "/sdapi/v1/img2img", timeout=120, json={
        "prompt": "", "init_images": [base64.b64encode(png_bytes(picture)).decode()], "denoising_strength": 0.75,
        "seed": 5, "width": 64, "height": 64, **FAST})
    assert diff(varied, pixels(base64.b64decode(a1111.json()["images"][0]))) == 0
    assert diff(varied, picture) > TOLERANCE


def test_progress_and_interrupt_through_a1111_s_routes(server):
    """One queue: A1111's /progress sees an OpenAI request running, /interrupt ends it, and it
    answers with the image as it stood."""
    out = {}
    run = threading.Thread(target=lambda: out.update(r=server.client().images.generate(
        prompt="x", size="64x64", extra_body={"seed": 2, "steps": 500, "scheduler": "Euler"})))
    run.start()
    deadline = time.monotonic() + 60
    while (p := httpx.get(server.url + "/sdapi/v1/progress", timeout=30).json())["state"]["sampling_step"] < 1:
        assert time.monotonic() < deadline and run.is_alive()
        time.sleep(0.05)
    assert p["state"]["sampling_steps"] == 500 and p["state"]["job"] == "scripts_txt2img"
    httpx.post(server.url + "/sdapi/v1/interrupt", timeout=30)
    run.join(60)
    assert len(out["r"].data) == 1 and "Steps: 500," in Image.open(io.BytesIO(b64_image(out["r"]))).info["parameters"]


def test_models(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == ["tiny-a"]
    assert client.models.retrieve("tiny-a").owned_by == "sdcli"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")


def error_of(r) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, r.text
    assert "Traceback" not in r.text and "\n" not in body["error"]["message"]
    return body["error"]


def test_openai_errors(server):
    with pytest.raises(openai.AuthenticationError):
        server.client("sk-wrong").images.generate(prompt="x", size="64x64")
    r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/sdapi/v1/sd-models", timeout=30).status_code == 200  # A1111's: no --api-auth

    client = server.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="dall-e-3", prompt="x", size="64x64")
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    for size in ("65x64", "big", "8192x8192"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(prompt="x", size=size)
        assert caught.value.param == "size"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", n=11)
    assert caught.value.param == "n"

    post = lambda path, **kw: httpx.post(server.url + path, headers={"Authorization": f"Bearer {KEY}"},  # noqa: E731
                                         timeout=30, **kw)
    picture = png_bytes(smooth_picture(64, 64))
    small = np.zeros((32, 32, 4), np.uint8)
    checks = [
        ("/v1/images/generations", {"json": {"size": "64x64"}}, "prompt"),  # FastAPI's validation, OpenAI's body
        ("/v1/images/generations", {"json": {"prompt": "x", "steps": 0}}, "steps"),
        ("/v1/images/generations", {"json": {"prompt": "x", "response_format": "gif"}}, "response_format"),
        ("/v1/images/generations", {"json": {"prompt": "x", "size": "64x64", "scheduler": "nope"}}, "scheduler"),
        ("/v1/images/edits", {"files": {"image": ("a.png", b"not an image")}, "data": {"prompt": "x"}}, "image"),
        ("/v1/images/edits", {"files": {"image": ("a.png", picture), "mask": ("m.png", png_bytes(small, "RGBA"))},
                              "data": {"prompt": "x"}}, "mask"),
        ("/v1/images/edits", {"files": {"image": ("a.png", picture), "mask": ("m.png", picture)},
                              "data": {"prompt": "x"}}, "mask"),  # no alpha channel
        ("/v1/images/variations", {"data": {"n": "1"}}, "image"),
    ]
    for path, kw, param in checks:
        r = post(path, **kw)
        assert r.status_code == 400 and error_of(r)["param"] == param, (path, param, r.text)
    r = post("/v1/nowhere", json={})
    assert r.status_code == 404 and error_of(r)["type"] == "invalid_request_error"


def test_413_and_500_in_openai_s_shape(models):
    """In-process: a body over the limit, and a model whose loading fails with a bug (500)."""
    from fastapi.testclient import TestClient

    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker

    def broken(path):
        raise RuntimeError("a bug\nwith a second line")

    worker = Worker(ModelRegistry(None, models / "tiny-a"), "tiny-a", make_engine=broken)
    worker.start(warm_up=False)
    try:
        client = TestClient(create_app(worker, max_body=1000, api_key=KEY))
        auth = {"Authorization": f"Bearer {KEY}"}
        r = client.post("/v1/images/generations", json={"prompt": "x" * 2000}, headers=auth)
        assert r.status_code == 413 and error_of(r)["type"] == "invalid_request_error"
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"  # A1111's routes keep theirs
        r = client.post("/v1/images/generations", json={"prompt": "x"}, headers=auth)
        assert r.status_code == 500 and error_of(r)["type"] == "server_error" and "a bug" in r.json()["error"]["message"]
    finally:
        worker.stop()
        worker.join(30)
