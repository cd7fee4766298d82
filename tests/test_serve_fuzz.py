"""A fuzz run of `sdcli serve`'s request fields (issue 13), in-process through FastAPI's
TestClient on the tiny model: txt2img, img2img, POST /options and /png-info get random bodies
of good, null, mistyped, out-of-range and unknown fields (JSON's NaN and Infinity included), and
bodies that are not objects.  Whatever comes: 200, or a 4xx JSON {"error", "detail"} with a
one-line detail; never a 500 (a bug, or a valid run's failure on the server's side), never a
traceback in the body.  Good values are small (8 to 32 pixels, 1 or 2 steps) and the bad ones
are refused before any generating, so that the run is quick.  Seeds are fixed (derandomize)."""
from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from sdcli.imaging.image_io import encode_png  # noqa: E402
from sdcli.serve.app import create_app  # noqa: E402
from sdcli.serve.worker import ModelRegistry, Worker  # noqa: E402

FUZZ = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

PNG = base64.b64encode(encode_png(np.full((16, 16, 3), 90, np.uint8), "a fox\nSteps: 2, Seed: 3, Size: 16x16")).decode()
MASK = base64.b64encode(encode_png(np.where(np.arange(16)[None, :, None] < 8, 255, 0).repeat(16, 0).repeat(3, 2)
                                   .astype(np.uint8))).decode()
ODD = [None, "", "x", -1, 0, 1.5, True, [], {}, [1], {"a": 1}, float("nan"), float("inf"), -float("inf"), 10**30,
       "é\n\x00"]  # tried in every field


def field(good, *bad):
    """Mostly good (so that some requests generate), one in three bad: the field's own or ODD."""
    wrong = st.sampled_from([*bad, *ODD])
    return st.integers(0, 2).flatmap(lambda roll: wrong if roll == 0 else good)


COMMON = {
    "prompt": field(st.sampled_from(["a fox", "(a:1.5) [b] <lora:none:1>", ""]), "a" * 5000),
    "negative_prompt": field(st.just("rain")),
    "styles": field(st.just([]), ["style"], [""], [None]),
    "seed": field(st.integers(-1, 2**32), -2, 2**64, 2**70),
    "subseed": field(st.integers(-1, 5)),
    "subseed_strength": field(st.just(0), 0.5, -1),
    "seed_resize_from_h": field(st.sampled_from([-1, 0]), 64, 5),
    "seed_resize_from_w": field(st.sampled_from([-1, 0]), 64, 5),
    "sampler_name": field(st.sampled_from(["Euler a", "Euler", "DPM++ 2M", "LCM", "euler_a"]), "Nope", "DPM++ 2M Karras"),
    "sampler_index": field(st.sampled_from(["Euler", "DDIM"]), "Nope"),
    "scheduler": field(st.sampled_from(["Automatic", "Karras", "automatic"]), "Exponential", "Uniform", "Nope"),
    "batch_size": field(st.integers(1, 2), 9, -3),
    "n_iter": field(st.just(1), 101, -3),
    "steps": field(st.integers(1, 2), 1001, -5),
    "cfg_scale": field(st.floats(0, 12), 100.5, -0.5, 1e308),
    "guidance_rescale": field(st.floats(0, 1), 1.5),
    "width": field(st.sampled_from([8, 16, 32]), 12, 4104, -8, 4097),
    "height": field(st.sampled_from([8, 16, 32]), 12, 4104, -8, 4097),
    "restore_faces": field(st.just(False)),
    "tiling": field(st.just(False)),
    "override_settings": field(
        st.fixed_dictionaries({}, optional={"CLIP_stop_at_last_layers": st.sampled_from([1, 2]),
                                            "emphasis": st.sampled_from(["Original", "None"]),
                                            "sd_vae_decode_method": st.just("Full"),
                                            "samples_format": st.just("png"), "randn_source": st.just("CPU")}),
        {"CLIP_stop_at_last_layers": float("inf")}, {"CLIP_stop_at_last_layers": -float("inf")},
        {"CLIP_stop_at_last_layers": 25}, {"CLIP_stop_at_last_layers": "2"}, {"CLIP_stop_at_last_layers": [2]},
        {"emphasis": ["Original"]}, {"emphasis": "Loud"}, {"sd_vae_decode_method": "TAESD"},
        {"sd_vae_decode_method": {}}, {"randn_source": "GPU"}, {"samples_format": "jpg"},
        {"sd_model_checkpoint": "nope"}, {"sd_model_checkpoint": 3}, {"sd_model_checkpoint": None}),
    "override_settings_restore_afterwards": field(st.just(True)),
    "script_name": field(st.sampled_from([None, ""]), "x/y"),
    "script_args": field(st.just([])),
    "alwayson_scripts": field(st.sampled_from([None, {}, {"controlnet": {"args": []}}]), {"adetailer": {"args": [True]}}),
    "send_images": field(st.sampled_from([True, False])),
    "save_images": field(st.just(False)),
    "some_client_field": field(st.just({"ignored": True})),  # unknown fields are accepted
}
TXT2IMG = {**COMMON, "enable_hr": field(st.just(False)), "denoising_strength": field(st.just(0.7)),
           "hr_scale": field(st.just(2)), "resize_mode": field(st.just(0), 1),
           "initial_noise_multiplier": field(st.just(1), 0.5)}
IMG2IMG = {**COMMON,
           "init_images": field(st.sampled_from([[PNG], ["data:image/png;base64," + PNG], [PNG, PNG]]),
                                ["!!"], ["aGVsbG8="], [""], [None], [PNG[:40]], [MASK[:-8]], [1]),
           "denoising_strength": field(st.floats(0.5, 1), 1.5, -0.1),
           "mask": field(st.sampled_from([None, MASK]), "!!", "aGVsbG8=", PNG[:40]),
           "mask_blur": field(st.integers(0, 8), 257, -1),
           "inpainting_mask_invert": field(st.sampled_from([0, 1]), 2),
           "resize_mode": field(st.just(0), 1, 3),
           "initial_noise_multiplier": field(st.just(1), 0.5),
           "include_init_images": field(st.sampled_from([True, False]))}
OPTIONS = {
    "CLIP_stop_at_last_layers": field(st.sampled_from([1, 2]), 0, 25, float("inf"), "1e400"),
    "emphasis": field(st.sampled_from(["Original", "None"]), "Loud"),
    "sd_vae_decode_method": field(st.just("Full"), "TAESD", "Slow"),
    "sd_vae_encode_method": field(st.just("Full"), "TAESD"),
    "randn_source": field(st.just("CPU"), "GPU", "NV"),
    "samples_format": field(st.just("png"), "jpg"),
    "sd_model_checkpoint": field(st.sampled_from(["tiny"]), "nope", "../tiny", "tiny/"),
    "some_option": field(st.just(3)),
}


def body_of(fields: dict, min_size: int = 0):
    return st.lists(st.sampled_from(sorted(fields)), unique=True, min_size=min_size, max_size=8).flatmap(
        lambda chosen: st.fixed_dictionaries({k: fields[k] for k in chosen}))


REQUESTS = st.one_of(
    st.tuples(st.just("/sdapi/v1/txt2img"), body_of(TXT2IMG)),
    st.tuples(st.just("/sdapi/v1/img2img"), body_of(IMG2IMG).map(lambda b: {"init_images": [PNG], **b})),
    st.tuples(st.just("/sdapi/v1/options"), body_of(OPTIONS)),
    st.tuples(st.just("/sdapi/v1/png-info"), st.fixed_dictionaries({}, optional={"image": field(
        st.sampled_from([PNG, MASK, "data:image/png;base64," + PNG]), "!!", "aGVsbG8=", PNG[:60], "", 3)})),
    st.tuples(st.sampled_from(["/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options", "/sdapi/v1/png-info"]),
              st.sampled_from([None, [], [1, 2], "text", 3, True, float("nan")])),  # bodies that are not objects
)


@pytest.fixture(scope="module")
def client(tiny_eps, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-fuzz-models")
    shutil.copytree(tiny_eps.ov_dir, root / "tiny")
    worker = Worker(ModelRegistry(root, root / "tiny"), "tiny", queue_size=8)
    worker.start()
    yield TestClient(create_app(worker))
    worker.stop()
    worker.join(30)


def post(client, path: str, body):
    """`body` as JSON, NaN and Infinity as Python's json writes them (Starlette reads them back)."""
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def check_response(r, path: str, body) -> None:
    """200, or a 4xx JSON {"error", "detail"} with a one-line detail; no traceback."""
    where = (path, body, r.status_code, r.text[:2000])
    if currently_in_test_context():  # the sweep runs outside hypothesis
        event(f"{path} {r.status_code}")
    assert r.status_code == 200 or 400 <= r.status_code < 500, where
    assert "Traceback" not in r.text, where
    data = r.json()
    if r.status_code != 200:
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and isinstance(data.get("detail"), str), where
        assert data["detail"] and "\n" not in data["detail"], where
    elif path.endswith("2img") and body.get("send_images", True) is True:  # (0, "no" also turn them off)
        assert data["images"], where


@settings(max_examples=80, **FUZZ)
@given(REQUESTS)
def test_requests_never_crash(client, request_):
    path, body = request_
    check_response(post(client, path, body), path, body)
    if path.endswith("options"):  # what was set (NaN, Infinity included) is read back
        check_response(client.get(path), path, "GET")


@pytest.mark.parametrize("path, fields", [("/sdapi/v1/txt2img", TXT2IMG), ("/sdapi/v1/img2img", IMG2IMG),
                                          ("/sdapi/v1/options", OPTIONS)])
def test_each_odd_value(client, path, fields):
    """Every field with each of the odd values (null, wrong types, NaN, Infinity, huge, text
    with a newline and a NUL) alone, on a good request at 8x8, 1 step, where the random run may
    not draw it (the odd values are all refused, or harmless: none generates at a large size)."""
    base = {"steps": 1, "width": 8, "height": 8, "init_images": [PNG]} if "2img" in path else {}
    if path.endswith("txt2img"):
        del base["init_images"]
    for name in fields:
        if path.endswith("img2img") and name in COMMON and name != "prompt":
            continue  # tried on txt2img: the same checks
        for value in ODD:
            body = {**base, name: value}
            check_response(post(client, path, body), path, body)
            if path.endswith("options"):  # what was set is read back
                check_response(client.get(path), path, "GET")
    for value in ODD:  # and a body that is not an object
        check_response(post(client, path, value), path, value)
    if path.endswith("options"):
        check_response(client.get(path), path, "GET")
    for query in ("x", "", "1", "nan"):
        check_response(client.get("/sdapi/v1/progress", params={"skip_current_image": query}), "progress", query)
    body = {"image": "é\n\x00"}
    check_response(post(client, "/sdapi/v1/png-info", body), "/sdapi/v1/png-info", body)


# --- what the fuzz found, kept as plain cases (each was a 500) --------------------------------------
@pytest.mark.parametrize("path, body, where", [
    ("/sdapi/v1/txt2img", {"override_settings": {"CLIP_stop_at_last_layers": float("inf")}},
     "override_settings.CLIP_stop_at_last_layers: must be a whole number, got inf"),
    ("/sdapi/v1/options", {"CLIP_stop_at_last_layers": -float("inf")},
     "options.CLIP_stop_at_last_layers: must be a whole number, got -inf"),
    ("/sdapi/v1/options", {"some_option": float("nan")}, "options.some_option: NaN and Infinity are not JSON numbers"),
    ("/sdapi/v1/txt2img", {"override_settings": {"x": [float("inf")]}},
     "override_settings.x: NaN and Infinity are not JSON numbers"),
    ("/sdapi/v1/png-info", {"image": float("nan")}, "image: Input should be a valid string"),
    ("/sdapi/v1/txt2img", {"steps": float("nan")}, "steps: "),
])
def test_nan_and_infinity_are_refused_not_a_500(client, path, body, where):
    r = post(client, path, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(where), r.text
    if path.endswith("options"):  # nothing was kept that GET /options could not send
        assert client.get(path).status_code == 200
