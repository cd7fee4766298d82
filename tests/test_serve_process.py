"""A real `sdcli serve` process on a loopback port, driven by the webuiapi package (a
third-party AUTOMATIC1111 client): txt2img, img2img, inpainting, options and the model switch,
progress during a run, interrupt, 20 concurrent requests (and with --queue-size 2, 503 at once
for the extra ones), auth, bad input, SIGTERM."""
from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

webuiapi = pytest.importorskip("webuiapi")
requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402

from tests.models import smooth_picture  # noqa: E402
from tests.servers import ServeProcess  # noqa: E402

AUTH = ("user", "pw")
SMALL = dict(steps=2, width=64, height=64)


class Server(ServeProcess):
    """tests/servers.py's server, with the webuiapi client."""

    def api(self, auth=AUTH) -> "webuiapi.WebUIApi":
        return webuiapi.WebUIApi(host="127.0.0.1", port=self.port, sampler="Euler a",
                                 username=auth[0] if auth else None, password=auth[1] if auth else None)


@pytest.fixture(scope="module")
def models(tiny_eps, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-models")
    for name in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny_eps.ov_dir, root / name)
    return root


@pytest.fixture(scope="module")
def server(models):
    server = Server("--model", models / "tiny-a", "--models-dir", models, "--api-auth", "user:pw,other:pw2")
    yield server
    server.stop()


def infotext(result) -> str:
    return result.image.info["parameters"]


def test_txt2img_img2img_and_inpainting_through_webuiapi(server):
    api = server.api()
    r = api.txt2img(prompt="a fox, at dawn", negative_prompt="rain", seed=11, cfg_scale=7, **SMALL)
    assert r.image.size == (64, 64) and r.info["seed"] == 11 and r.info["all_seeds"] == [11]
    assert infotext(r) == r.info["infotexts"][0] and "Seed: 11," in infotext(r) and "Sampler: Euler a" in infotext(r)
    assert r.parameters["prompt"] == "a fox, at dawn"

    picture = Image.fromarray(smooth_picture(64, 64))
    r = api.img2img(images=[picture], prompt="paint", denoising_strength=0.5, seed=3, **SMALL)
    assert r.image.size == (64, 64) and "Denoising strength: 0.5" in infotext(r)

    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    r = api.img2img(images=[picture], mask_image=Image.fromarray(mask), prompt="a box", denoising_strength=1.0,
                    seed=3, **SMALL)
    assert "Mask blur: 4" in infotext(r)
    out = np.asarray(r.image.convert("RGB"))
    assert np.array_equal(out[:4], smooth_picture(64, 64)[:4])  # outside the mask: the original's pixels


def test_options_lists_and_model_switch(server):
    api = server.api()
    assert api.util_get_model_names() == ["tiny-a", "tiny-b"]
    assert api.util_get_current_model() == "tiny-a"
    api.util_set_model("tiny-b", find_closest=False)
    assert api.util_get_current_model() == "tiny-b"
    assert "Model: tiny-b," in infotext(api.txt2img(prompt="x", seed=1, **SMALL))
    api.util_set_model("tiny-a", find_closest=False)
    assert "Model: tiny-a," in infotext(api.txt2img(prompt="x", seed=1, **SMALL))
    assert "Euler a" in api.util_get_sampler_names() and "Automatic" in [s["label"] for s in api.get_schedulers()]
    for listing in (api.get_upscalers, api.get_sd_vae, api.get_memory, api.get_embeddings, api.get_loras,
                    api.get_scripts, api.get_progress):
        listing()  # each answers 200 with JSON


def test_progress_during_a_run_then_interrupt(server):
    api, other = server.api(), server.api()
    out = {}
    run = threading.Thread(target=lambda: out.update(r=other.txt2img(
        prompt="x", sampler_name="Euler", steps=500, width=64, height=64, seed=2)))
    run.start()
    deadline = time.monotonic() + 60
    while (p := api.get_progress())["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert p["state"]["job_count"] == 1 and p["state"]["sampling_steps"] == 500 and 0 < p["progress"] <= 1
    asked = time.monotonic()
    api.interrupt()
    run.join(60)
    assert time.monotonic() - asked < 20
    assert out["r"].info["interrupted"] and len(out["r"].images) == 1
    assert not api.txt2img(prompt="x", seed=5, **SMALL).info["interrupted"]  # the next request runs normally


def test_twenty_concurrent_requests_each_answered_once_with_its_own_seed(server):
    def one(i):
        r = server.api().txt2img(prompt=f"request {i}", seed=-1, **SMALL)
        return r.info["seed"], infotext(r), r.info["all_prompts"][0]

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    seeds = [seed for seed, _, _ in results]
    assert len(set(seeds)) == 20
    for i, (seed, text, prompt) in enumerate(results):
        assert prompt == f"request {i}" and text.startswith(f"request {i}\n") and f"Seed: {seed}," in text


def test_auth_and_bad_input_over_http(server):
    for path in ("/sdapi/v1/options", "/docs", "/openapi.json"):
        r = requests.get(server.url + path, timeout=30)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic") and r.json()["detail"]
        assert requests.get(server.url + path, auth=("user", "nope"), timeout=30).status_code == 401
        assert requests.get(server.url + path, auth=("other", "pw2"), timeout=30).status_code == 200
    post = lambda **kw: requests.post(server.url + "/sdapi/v1/txt2img", auth=AUTH, timeout=60, **kw)  # noqa: E731
    r = post(data=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError" and "Traceback" not in r.text
    r = post(json={"prompt": "x", "steps": -1})
    assert r.status_code == 422 and "steps" in r.json()["detail"]
    r = post(json={"prompt": "x", "enable_hr": True, "hr_scale": 1, **SMALL})
    assert r.status_code == 422 and r.json()["field"] == "hr_scale"
    assert post(json={"prompt": "x", **SMALL}).status_code == 200  # still serving


# -- a second server: --queue-size 2, then SIGTERM -------------------------------------------------
@pytest.fixture(scope="module")
def small_queue(tiny_eps):
    server = Server("--model", tiny_eps.ov_dir, "--queue-size", 2)
    yield server
    server.stop()


def start_long_run(server) -> tuple[threading.Thread, dict]:
    out = {}

    def post():
        out["r"] = requests.post(server.url + "/sdapi/v1/txt2img", timeout=120, json={
            "prompt": "x", "sampler_name": "Euler", "steps": 500, "width": 64, "height": 64})

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 60
    while requests.get(server.url + "/sdapi/v1/progress", timeout=30).json()["state"]["sampling_step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return thread, out


def test_queue_size_2_answers_the_extra_requests_503_at_once(small_queue):
    long, _ = start_long_run(small_queue)
    answers = []

    def one(i):
        started = time.monotonic()
        r = requests.post(small_queue.url + "/sdapi/v1/txt2img", json={"prompt": f"p{i}", **SMALL}, timeout=120)
        answers.append((r.status_code, time.monotonic() - started, r.json()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(answers) < 18:
        assert time.monotonic() < deadline, answers
        time.sleep(0.05)
    refused = list(answers)
    assert [code for code, _, _ in refused] == [503] * 18
    assert all(seconds < 10 for _, seconds, _ in refused) and refused[0][2]["error"] == "QueueFull"
    requests.post(small_queue.url + "/sdapi/v1/interrupt", timeout=30)
    for t in threads:
        t.join(120)
    long.join(120)
    assert sorted(code for code, _, _ in answers) == [200, 200] + [503] * 18


def test_sigterm_stops_the_running_request_and_the_server(small_queue):
    long, out = start_long_run(small_queue)
    small_queue.proc.send_signal(signal.SIGTERM)
    assert small_queue.proc.wait(60) == 143
    long.join(60)
    r = out["r"]
    assert r.status_code == 200 and json.loads(r.json()["info"])["interrupted"]
    text = "".join(small_queue.lines)
    assert "terminated" in text and "Traceback" not in text
