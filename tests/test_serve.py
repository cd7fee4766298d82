"""`sdcli serve` in-process, through FastAPI's TestClient: A1111's routes and shapes, the same
PNG as `sdcli generate`, refused fields and bad values (422 naming the field), options and the
model switch, progress with previews, interrupt, auth, limits.  A real server driven by the
webuiapi package is tested in test_serve_process.py."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from sdcli.imaging.image_io import encode_png, read_png_text  # noqa: E402
from sdcli.serve.app import create_app  # noqa: E402
from sdcli.serve.worker import ModelRegistry, Worker  # noqa: E402
from tests.models import smooth_picture  # noqa: E402

SIZE = {"width": 64, "height": 64}
SMALL = {"steps": 2, **SIZE}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sdcli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def models_dir(tiny_eps, tmp_path_factory):
    """models/tiny-a (with a tiny VAE, for previews) and models/tiny-b: copies of tiny_eps."""
    from sdcli.convert.random_model import build_random_taesd

    root = tmp_path_factory.mktemp("serve-models")
    shutil.copytree(tiny_eps.ov_dir, root / "tiny-a")
    shutil.copytree(tiny_eps.ov_dir, root / "tiny-b")
    taesd = tmp_path_factory.mktemp("serve-taesd") / "taesd"
    build_random_taesd(taesd, seed=5)
    r = run("convert", "--tiny-vae", taesd, "--into", root / "tiny-a", "--quiet")
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope="module")
def worker(models_dir):
    worker = Worker(ModelRegistry(models_dir, models_dir / "tiny-a"), "tiny-a", queue_size=8)
    worker.start()
    yield worker
    worker.stop()
    worker.join(30)


@pytest.fixture(scope="module")
def client(worker):
    return TestClient(create_app(worker))


def b64(image: np.ndarray, prefix: bool = False) -> str:
    text = base64.b64encode(encode_png(image)).decode()
    return "data:image/png;base64," + text if prefix else text


def png_of(response, i: int = 0) -> bytes:
    return base64.b64decode(response.json()["images"][i])


def test_txt2img_gives_generate_s_png_and_from_image_redoes_it(client, models_dir, tmp_path):
    body = {"prompt": "a red fox, (sunset:1.2)", "negative_prompt": "rain, snow", "seed": 7, "sampler_name": "Euler a",
            "scheduler": "Automatic", "cfg_scale": 6.5, **SMALL, "some_client_field": {"ignored": True}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    served = png_of(r)
    assert not r.json()["images"][0].startswith("data:")
    info = json.loads(r.json()["info"])
    assert isinstance(r.json()["info"], str) and info["seed"] == 7 and info["all_seeds"] == [7]
    assert info["infotexts"] == [read_png_text_bytes(served, tmp_path)]
    assert info["sampler_name"] == "Euler a" and info["sd_model_name"] == "tiny-a"
    assert r.json()["parameters"]["prompt"] == body["prompt"] and r.json()["parameters"]["some_client_field"]

    out = tmp_path / "cli.png"
    cli = run("generate", "--model", models_dir / "tiny-a", "--prompt", body["prompt"], "--negative-prompt", "rain, snow",
              "--seed", 7, "--scheduler", "euler_a", "--guidance-scale", 6.5, "--steps", 2, "--width", 64,
              "--height", 64, "--output", out, "--quiet")
    assert cli.returncode == 0, cli.stderr
    assert out.read_bytes() == served  # the same pixels and the same parameters chunk, byte for byte

    (tmp_path / "served.png").write_bytes(served)
    again = tmp_path / "again.png"
    cli = run("generate", "--model", models_dir / "tiny-a", "--from-image", tmp_path / "served.png", "--output", again,
              "--quiet")
    assert cli.returncode == 0 and cli.stderr == "", cli.stderr
    assert again.read_bytes() == served


def read_png_text_bytes(data: bytes, tmp_path) -> str:
    path = tmp_path / "t.png"
    path.write_bytes(data)
    return read_png_text(path)["parameters"]


def test_batches_seeds_and_random_seed(client, tmp_path):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": -1, "batch_size": 2, "n_iter": 2, **SMALL})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    seeds = info["all_seeds"]
    assert len(r.json()["images"]) == 4 and seeds == [seeds[0] + i for i in range(4)] and info["seed"] == seeds[0]
    for i, seed in enumerate(seeds):
        assert f"Seed: {seed}," in read_png_text_bytes(png_of(r, i), tmp_path) == info["infotexts"][i]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "send_images": False, **SMALL})
    assert r.status_code == 200 and r.json()["images"] == []


def test_img2img_and_inpainting(client, tmp_path):
    picture = smooth_picture(64, 64)
    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [b64(picture, prefix=True)],
                                               "denoising_strength": 0.5, "seed": 3, **SMALL})
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Denoising strength: 0.5" in text and r.json()["parameters"]["init_images"] is None

    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:, 32:] = 255  # the right half is repainted
    body = {"prompt": "x", "init_images": [b64(picture)], "mask": b64(mask, prefix=True), "mask_blur": 2,
            "denoising_strength": 1.0, "seed": 3, "include_init_images": True, **SMALL}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    from sdcli.imaging.image_io import read_rgb

    (tmp_path / "inpainted.png").write_bytes(png_of(r))
    out = read_rgb(tmp_path / "inpainted.png")
    assert np.array_equal(out[:, :20], picture[:, :20])  # kept exactly, away from the blurred edge
    assert not np.array_equal(out[:, 44:], picture[:, 44:])
    assert "Mask blur: 2" in json.loads(r.json()["info"])["infotexts"][0] and r.json()["parameters"]["mask"]

    r = client.post("/sdapi/v1/img2img", json={**body, "inpainting_mask_invert": 1})
    (tmp_path / "inverted.png").write_bytes(png_of(r))
    out = read_rgb(tmp_path / "inverted.png")
    assert np.array_equal(out[:, 44:], picture[:, 44:]) and not np.array_equal(out[:, :20], picture[:, :20])


# what webuiapi 0.9 sends by default (its txt2img), which must be accepted as it is
WEBUIAPI_TXT2IMG = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "x", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
    "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 2, "cfg_scale": 7.0, "width": 64, "height": 64,
    "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
    "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
    "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "scheduler": "automatic",
    "sampler_index": "Euler a", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {},
}


def test_defaults_and_nulls_are_accepted(client):
    assert client.post("/sdapi/v1/txt2img", json=WEBUIAPI_TXT2IMG).status_code == 200
    nulls = {key: None for key in ("negative_prompt", "styles", "seed", "subseed", "subseed_strength", "sampler_name",
                                   "sampler_index", "scheduler", "batch_size", "n_iter", "cfg_scale", "restore_faces",
                                   "tiling", "override_settings", "script_name", "script_args", "alwayson_scripts",
                                   "enable_hr", "denoising_strength", "eta", "s_noise")}
    r = client.post("/sdapi/v1/txt2img", json={**nulls, "prompt": "x", **SMALL})
    assert r.status_code == 200, r.text
    # what other clients send: Swagger's example body, SillyTavern's save_images
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "styles": [""], "save_images": True,
                                               "refiner_checkpoint": "", "refiner_switch_at": 0, "comments": {},
                                               "disable_extra_networks": False, "s_min_uncond": 0})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field, value", [
    ("hr_checkpoint_name", "other"), ("restore_faces", True), ("tiling", True), ("script_name", "X/Y/Z plot"),
    ("alwayson_scripts", {"ADetailer": {"args": [True]}}), ("subseed_strength", 0.3), ("styles", ["mine"]),
    ("seed_resize_from_w", 512), ("refiner_checkpoint", "sdxl-refiner"),
])
def test_fields_that_switch_on_what_sdcli_does_not_do_are_refused(client, field, value):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, field: value})
    assert r.status_code == 422 and r.json()["field"] == field and field in r.json()["detail"], r.text


@pytest.mark.parametrize("route, body, field", [
    ("txt2img", {"steps": 0}, "steps"), ("txt2img", {"steps": "many"}, "steps"), ("txt2img", {"width": 65}, "width"),
    ("txt2img", {"cfg_scale": 1e9}, "cfg_scale"), ("txt2img", {"seed": -5}, "seed"),
    ("txt2img", {"batch_size": 9}, "batch_size"), ("txt2img", {"sampler_name": "Dice roll"}, "sampler_name"),
    ("txt2img", {"sampler_name": "Euler", "scheduler": "Karras"}, "scheduler"),
    ("txt2img", {"scheduler": "Exponential"}, "scheduler"),
    ("txt2img", {"sampler_name": "Euler", "scheduler": "Uniform"}, "scheduler"),  # the model spaces steps as DDIM
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 0}}, "override_settings.CLIP_stop_at_last_layers"),
    ("txt2img", {"override_settings": {"randn_source": "GPU"}}, "override_settings.randn_source"),
    ("img2img", {"init_images": []}, "init_images"), ("img2img", {"init_images": ["not base64!"]}, "init_images[0]"),
    ("img2img", {"init_images": [base64.b64encode(b"text, not an image").decode()]}, "init_images[0]"),
    ("img2img", {"init_images": [b64(np.zeros((8, 8, 3), np.uint8))], "denoising_strength": 2}, "denoising_strength"),
    ("img2img", {"init_images": [b64(np.zeros((8, 8, 3), np.uint8))], "resize_mode": 1}, "resize_mode"),
])
def test_bad_values_are_422_with_a_message(client, route, body, field):
    r = client.post(f"/sdapi/v1/{route}", json={"prompt": "x", **SMALL, **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"] and field in r.json()["detail"] and "Traceback" not in r.text


def test_bad_json_and_server_keeps_serving(client):
    r = client.post("/sdapi/v1/txt2img", content=b'{"prompt": "x", "steps": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError" and r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.get("/sdapi/v1/nothing-here").json() == {"error": "NotFound", "detail": "Not Found"}
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}).status_code == 200


def test_lists_and_png_info(client, tmp_path):
    names = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "DDIM", "PLMS", "UniPC", "LMS", "Heun", "LCM"} <= set(names)
    assert "euler_a" in names["Euler a"]["aliases"] and names["DPM++ 2M"]["options"]["scheduler"] == "karras"
    assert [s["label"] for s in client.get("/sdapi/v1/schedulers").json()] == ["Automatic", "Karras", "DDIM"]
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["title"] for m in models] == ["tiny-a", "tiny-b"] and all(m["filename"] for m in models)
    assert client.get("/sdapi/v1/upscalers").json()[0]["name"] == "None"
    assert client.get("/sdapi/v1/latent-upscale-modes").json()[0] == {"name": "Latent"}
    assert client.get("/sdapi/v1/sd-vae").json() == []
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert set(client.get("/sdapi/v1/embeddings").json()) == {"loaded", "skipped"}
    assert isinstance(client.get("/sdapi/v1/loras").json(), list)
    assert client.get("/sdapi/v1/memory").json()["ram"]["used"] > 0
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200

    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a, b", "seed": 4, **SMALL})
    got = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + r.json()["images"][0]}).json()
    assert got["info"] == json.loads(r.json()["info"])["infotexts"][0]
    assert got["parameters"]["Prompt"] == "a, b" and got["parameters"]["Seed"] == "4"
    assert got["parameters"]["Size-1"] == "64" and got["parameters"]["RNG"] == "CPU"
    assert client.post("/sdapi/v1/png-info", json={"image": b64(np.zeros((4, 4, 3), np.uint8))}).json()["info"] == ""
    assert client.post("/sdapi/v1/png-info", json={"image": "bm90IGEgcG5n"}).status_code == 422


def test_options_and_model_switch(client, worker):
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-a"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-b" and worker.loaded == "tiny-b"
    text = lambda r: json.loads(r.json()["info"])["infotexts"][0]  # noqa: E731
    assert "Model: tiny-b," in text(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}))
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "override_settings": {
        "sd_model_checkpoint": "tiny-a", "CLIP_stop_at_last_layers": 2}})
    assert "Model: tiny-a," in text(r) and "Clip skip: 2" in text(r)
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-b"  # restored afterwards
    for title in ("nope", "../tiny-a", str(worker.registry.find("tiny-a").path)):
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title})
        assert r.status_code == 404 and "not found" in r.json()["detail"], r.text
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "override_settings": {"sd_model_checkpoint": title}})
        assert r.status_code == 404
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-a", "emphasis": "None"}).status_code == 200
    assert "Emphasis: None" in text(client.post("/sdapi/v1/txt2img", json={"prompt": "(x)", **SMALL}))
    assert client.post("/sdapi/v1/options", json={"emphasis": "Original"}).status_code == 200
    assert client.post("/sdapi/v1/options", json={"emphasis": "No norm"}).status_code == 422


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_progress_preview_interrupt_and_the_next_request(client, worker):
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    out: dict = {}
    long = threading.Thread(target=lambda: out.update(r=client.post(
        "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 500, "sampler_name": "Euler", **SIZE, "seed": 1})))
    long.start()
    first = wait_for(lambda: (p := client.get("/sdapi/v1/progress").json())["state"]["sampling_step"] >= 1 and p)
    assert first["state"]["job_count"] == 1 and first["state"]["sampling_steps"] == 500
    assert 0 < first["progress"] <= 1 and first["eta_relative"] >= 0 and "step" in first["textinfo"]
    preview = wait_for(lambda: client.get("/sdapi/v1/progress").json()["current_image"])  # tiny-a has a tiny VAE
    assert base64.b64decode(preview).startswith(b"\x89PNG")
    assert client.get("/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
    asked = time.monotonic()
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    long.join(60)
    assert time.monotonic() - asked < 20
    r = out["r"]
    assert r.status_code == 200 and len(r.json()["images"]) == 1 and json.loads(r.json()["info"])["interrupted"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
    assert r.status_code == 200 and not json.loads(r.json()["info"])["interrupted"]


def test_auth_on_every_route_and_body_limit(worker):
    client = TestClient(create_app(worker, [("ann", "s3cret"), ("bob", "pw:with:colons")], max_body=4096))
    for path in ("/sdapi/v1/options", "/docs", "/openapi.json", "/sdapi/v1/progress", "/nothing"):
        for auth in (None, ("ann", "wrong"), ("nobody", "s3cret"), ("ann", "")):
            r = client.get(path, auth=auth)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), (path, auth)
            assert r.json()["error"] == "Unauthorized"
    assert client.get("/sdapi/v1/options", auth=("ann", "s3cret")).status_code == 200
    assert client.get("/docs", auth=("bob", "pw:with:colons")).status_code == 200
    r = client.post("/sdapi/v1/png-info", json={"image": "A" * 10_000}, auth=("ann", "s3cret"))
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"


def test_a_size_that_cannot_fit_is_refused_before_it_starts(client, worker, monkeypatch):
    import sdcli.engine.memory as memory

    monkeypatch.delenv("SDCLI_SKIP_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)  # 1 MB free
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)  # (the test process's own size varies with the suite)
    started = time.monotonic()
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 2048, "height": 2048})
    assert r.status_code == 422 and "GB of memory" in r.json()["detail"], r.text
    assert time.monotonic() - started < 10 and worker.state.job_count == 0
    monkeypatch.undo()
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}).status_code == 200


def test_lora_and_embeddings_folders_given_to_serve(models_dir, tiny_eps, tmp_path):
    """serve --lora-dir/--embeddings-dir: the lists name the files there and a prompt's <lora:...>
    is found there (the request's infotext records its hash); a folder that is not there is one
    line and exit 2 before anything listens."""
    from sdcli.engine.networks import NetworkFolders
    from tests.lora_files import fresh_pipe, kohya_lora, save

    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    loras.mkdir()
    embeddings.mkdir()
    save(kohya_lora(fresh_pipe(tiny_eps), {"linear"}, seed=1), loras / "served.safetensors")
    from safetensors.numpy import save_file

    save_file({"emb_params": np.ones((3, 32), np.float32)}, str(embeddings / "wide.safetensors"))
    (embeddings / "broken.safetensors").write_bytes(b"not a safetensors file")
    worker = Worker(ModelRegistry(models_dir, models_dir / "tiny-a"), "tiny-a", queue_size=2,
                    networks=NetworkFolders(loras, embeddings))
    worker.start()
    try:
        client = TestClient(create_app(worker))
        assert [entry["name"] for entry in client.get("/sdapi/v1/loras").json()] == ["served"]
        listed = client.get("/sdapi/v1/embeddings").json()
        assert listed["loaded"]["wide"]["shape"] == 32 and listed["loaded"]["wide"]["vectors"] == 3
        assert list(listed["skipped"]) == ["broken"]
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat <lora:served:0.7>", "seed": 4, **SMALL})
        assert r.status_code == 200, r.text
        assert "Lora hashes" in json.loads(r.json()["info"])["infotexts"][0]
    finally:
        worker.stop()
        worker.join(30)
    r = run("serve", "--model", models_dir / "tiny-a", "--lora-dir", tmp_path / "missing", "--port", "0")
    assert r.returncode == 2 and "--lora-dir: folder not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
