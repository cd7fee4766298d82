"""A1111's ControlNet extension's API on `sdcli serve` (serve/controlnet_api.py), in-process through
FastAPI's TestClient on tiny_eps and the tiny ControlNets: a unit of alwayson_scripts.controlnet
gives `sdcli generate --controlnet`'s pixels, follows A1111's guidance start/end rule, its weight
and thresholds count; webuiapi's unit shape; the /controlnet/* routes; the refusals."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from sdcli.imaging.image_io import encode_png, read_rgb  # noqa: E402
from tests.controlnets import SIZE, STEPS, moved, sdcli_controlnet  # noqa: E402
from tests.reference import NEGATIVE, PROMPT, SEED  # noqa: E402

BODY = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "sampler_name": "Euler",
        "cfg_scale": 7.5, "width": SIZE, "height": SIZE}


def b64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


def pixels(text: str, tmp_path, name: str = "served.png") -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(base64.b64decode(text))
    return read_rgb(path).astype(np.int16)


@pytest.fixture(scope="module")
def client(tiny_eps, tiny_controlnets):
    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDCLI_CONTROLNET_DIR", str(tiny_controlnets.folder))
        worker = Worker(ModelRegistry(None, tiny_eps.ov_dir), tiny_eps.ov_dir.resolve().name, queue_size=4,
                        precision="f32")
        worker.start(warm_up=False)
        yield TestClient(create_app(worker))
        worker.stop()
        worker.join(30)


@pytest.fixture(scope="module")
def picture_a(tiny_controlnets):
    return read_rgb(tiny_controlnets.images["a"])


def txt2img(client, *units, scripts_key="controlnet", **extra):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, **extra, "alwayson_scripts": {scripts_key: {"args": list(units)}}})
    assert r.status_code == 200, r.text
    return r.json()


def unit(picture, **fields):
    return {"enabled": True, "module": "none", "model": "cn-a", "image": b64(picture), **fields}


def test_a_unit_gives_generate_s_pixels_and_its_map(client, tiny_eps, tiny_controlnets, picture_a, tmp_path):
    """guidance 0..1 (where A1111's rule and diffusers' run every step), A1111's "NAME [hash]"
    model name, "ControlNet" as webuiapi spells the script; the map (save_detected_map's default)
    comes after the picture; the infotext has the unit."""
    out = txt2img(client, unit(picture_a, model="cn-a [d14c016b]"), scripts_key="ControlNet")
    served = pixels(out["images"][0], tmp_path)
    cli = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "cli", [dict(name="cn-a", image=tiny_controlnets.images["a"])])
    assert np.array_equal(served, cli)
    assert len(out["images"]) == 2 and np.array_equal(pixels(out["images"][1], tmp_path, "map.png"), picture_a)
    info = json.loads(out["info"])
    text = info["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: cn-a, Weight: 1.0, Resize Mode: Crop and Resize' in text, text
    assert info["extra_generation_params"]["ControlNet 0"].startswith("Module: none, Model: cn-a")

    weaker = txt2img(client, unit(picture_a, weight=0.4, save_detected_map=False))
    assert len(weaker["images"]) == 1
    distance = moved(pixels(weaker["images"][0], tmp_path, "weaker.png"), served)
    print(f"controlnet api: weight 0.4 moved {distance} from weight 1")
    assert distance > 2


def test_guidance_start_end_follow_a1111(client, tiny_eps, tiny_controlnets, picture_a, tmp_path):
    """A1111's extension runs a unit on step i of n unless s / n is outside [start, end], s being
    the step before's index (max(i - 1, 0)); diffusers' rule (the CLI's) keeps i / n >= start and
    (i + 1) / n <= end.  4 steps, 0.25..0.75: A1111 runs steps 2 and 3, diffusers 1 and 2, as the
    CLI does with 0.5..1: the served picture is the CLI's at 0.5..1, not at 0.25..0.75."""
    from sdcli.engine.controlnet import ControlUnit
    from sdcli.serve.controlnet_api import A1111Unit

    a1111 = A1111Unit("cn-a", picture_a, start=0.25, end=0.75)
    diffusers = ControlUnit("cn-a", picture_a, start=0.25, end=0.75)
    assert [i for i in range(4) if a1111.runs_at(i, 4)] == [2, 3]
    assert [i for i in range(4) if diffusers.runs_at(i, 4)] == [1, 2]
    assert all(A1111Unit("cn-a", picture_a).runs_at(i, n) for n in (1, 4, 20) for i in range(n))
    assert [i for i in range(20) if A1111Unit("cn-a", picture_a, end=0.5).runs_at(i, 20)] == \
        list(range(12))  # s = 0, 0, 1, ..., 10: one step more than diffusers' 0..9, and step 0 twice over
    A1111Unit("cn-a", picture_a, start=0.5, end=0.5).check()  # (A1111 takes start == end)

    out = txt2img(client, unit(picture_a, guidance_start=0.25, guidance_end=0.75, save_detected_map=False))
    served = pixels(out["images"][0], tmp_path)
    image = tiny_controlnets.images["a"]
    same_steps = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "half", [dict(name="cn-a", image=image,
                                                                                      start=0.5, end=1.0)])
    diffusers_rule = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "quarter",
                                      [dict(name="cn-a", image=image, start=0.25, end=0.75)])
    print(f"controlnet api: 0.25..0.75 is the CLI's 0.5..1 (max {moved(served, same_steps)}), "
          f"{moved(served, diffusers_rule)} from the CLI's 0.25..0.75")
    assert np.array_equal(served, same_steps)
    assert moved(served, diffusers_rule) > 2


def test_webuiapi_unit_with_canny_thresholds(client, tiny_eps, tiny_controlnets, tmp_path):
    """webuiapi's ControlNetUnit(...).to_dict() (its processor_res 512, thresholds 64/64, "Resize and
    Fill"): canny at 64/64 (the unit's thresholds) on the image scaled to 512, the map fitted back
    to the picture (the extension's way: imaging/detectmap.py): the CLI's picture with that map as
    --control-image; the map comes back; the infotext records the module, resolution and
    thresholds.  processor_res 64 (the picture's size) makes another map and picture."""
    import cv2

    from sdcli.imaging.detectmap import fit_map

    stripes = read_rgb(tiny_controlnets.images["b"])  # (edges at both resolutions)
    webuiapi_unit = {"image": b64(stripes), "mask": None, "module": "canny", "model": "cn-b", "weight": 1.0,
                     "resize_mode": "Resize and Fill", "low_vram": False, "processor_res": 512, "threshold_a": 64,
                     "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
                     "pixel_perfect": False, "hr_option": "Both", "enabled": True}
    out = txt2img(client, webuiapi_unit, scripts_key="ControlNet")
    edges = cv2.Canny(cv2.resize(stripes, (512, 512), interpolation=cv2.INTER_CUBIC), 64, 64)
    detected = pixels(out["images"][1], tmp_path, "map.png")
    assert np.array_equal(detected, fit_map(np.repeat(edges[:, :, None], 3, axis=2), 64, 64, "resize-and-fill"))
    assert 0 < edges.mean() and not np.array_equal(edges, cv2.Canny(stripes, 100, 200))  # the thresholds count
    at64 = txt2img(client, {**webuiapi_unit, "processor_res": 64}, scripts_key="ControlNet")
    assert np.array_equal(pixels(at64["images"][1], tmp_path, "map64.png")[:, :, 0], cv2.Canny(stripes, 64, 64))
    distance = moved(pixels(at64["images"][0], tmp_path, "at64.png"), pixels(out["images"][0], tmp_path))
    print(f"controlnet api: processor_res 64 moved {distance} from 512")
    assert distance > 2
    from sdcli.imaging.image_io import save_png

    save_png(tmp_path / "edges.png", detected.astype(np.uint8))
    cli = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "cli", [dict(name="cn-b", image=tmp_path / "edges.png")],
                           "--control-resize", "resize-and-fill")
    assert np.array_equal(pixels(out["images"][0], tmp_path), cli)
    assert "Module: canny, Model: cn-b, Weight: 1.0, Resize Mode: Resize and Fill, Processor Res: 512, Threshold A: " \
        "64.0, Threshold B: 64.0" in json.loads(out["info"])["infotexts"][0]

    # webuiapi's "no units" (its workaround when the extension is there): a plain picture
    plain = client.post("/sdapi/v1/txt2img", json={**BODY, "steps": 1, "alwayson_scripts": {"ControlNet": {"args": []}}})
    assert plain.status_code == 200 and len(plain.json()["images"]) == 1
    assert "ControlNet" not in json.loads(plain.json()["info"])["infotexts"][0]


def test_img2img_unit_without_image_uses_the_init_image(client, picture_a):
    body = {**BODY, "steps": 2, "init_images": [b64(picture_a)], "denoising_strength": 0.5,
            "alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "model": "cn-a", "control_mode": 2,
                                                          "resize_mode": 0, "save_detected_map": False}]}}}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Resize Mode: Just Resize" in text and "Control Mode: ControlNet is more important" in text, text


def test_routes(client, tiny_controlnets):
    import cv2

    stripes = read_rgb(tiny_controlnets.images["b"])

    assert client.get("/controlnet/version").json() == {"version": 3}
    assert client.get("/controlnet/model_list", params={"update": "true"}).json() == {"model_list": ["cn-a", "cn-b"]}
    modules = client.get("/controlnet/module_list", params={"alias_names": "false"}).json()
    assert modules["module_list"][0] == "none" and "canny" in modules["module_list"]
    canny = modules["module_detail"]["canny"]
    assert canny["model_free"] is False and [s["name"] for s in canny["sliders"]] == \
        ["Resolution", "Low Threshold", "High Threshold"]
    assert canny["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1}
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["All"]["model_list"] == ["None", "cn-a", "cn-b"] and types["Canny"]["default_option"] == "canny"
    assert set(types["Canny"]) == {"module_list", "model_list", "default_option", "default_model"}
    assert client.get("/controlnet/settings").json()["control_net_unit_count"] == 3

    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [b64(stripes)],
                                                "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
                                                "controlnet_threshold_b": 200})
    assert r.status_code == 200 and r.json()["info"] == "Success", r.text
    data = base64.b64decode(r.json()["images"][0])
    detected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(detected, cv2.Canny(stripes, 100, 200)) and detected.any()
    webuiapi = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_images": [b64(stripes)],
                                                       "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
                                                       "controlnet_threshold_b": 200})
    assert webuiapi.json()["images"] == r.json()["images"]
    for body, field in (({"controlnet_module": "depth_midas", "controlnet_input_images": [b64(stripes)]},
                         "controlnet_module"), ({"controlnet_module": "canny"}, "controlnet_input_images")):
        r = client.post("/controlnet/detect", json=body)
        assert r.status_code == 422 and r.json()["field"] == field, r.text


@pytest.mark.parametrize("fields, field, words", [
    ({"model": "control_v11p_sd15_canny [d14c016b]"}, "model", ["control_v11p_sd15_canny", "ControlNet"]),
    ({"image": base64.b64encode(b"not an image").decode()}, "image", []),
    ({"module": "openpose"}, "module", ["openpose", "body_pose_model.pth"]),  # its networks not converted
    ({"module": "no_such_module"}, "module", ["no_such_module"]),
    ({"weight": 3}, "weight", []),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start", []),
    ({"resize_mode": "Stretch"}, "resize_mode", ["Just Resize"]),
])
def test_bad_units_are_422_naming_the_field(client, tiny_controlnets, picture_a, fields, field, words):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": False, "model": "nope"}, unit(picture_a, **fields)]}}})
    assert r.status_code == 422 and r.json()["field"] == f"alwayson_scripts.controlnet.args[1].{field}", r.text
    assert r.json()["error"] == "FieldError" and "\n" not in r.json()["detail"]
    for word in words:
        assert word in r.json()["detail"]
    if field == "model":
        assert str(tiny_controlnets.folder) in r.json()["detail"]


def test_inpainting_with_a_unit_gives_generate_s_pixels(client, tiny_eps, tiny_controlnets, picture_a, tmp_path):
    """img2img with a mask and a unit: `sdcli generate --init-image --mask --controlnet`'s pixels
    (A1111's mask blur 4 by default); the unit moves the inpainted picture."""
    from sdcli.imaging.image_io import save_png

    picture_b = read_rgb(tiny_controlnets.images["b"])
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[:, :32] = 255
    save_png(tmp_path / "mask.png", mask)
    save_png(tmp_path / "init.png", picture_b)
    body = {**BODY, "init_images": [b64(picture_b)], "mask": b64(mask), "denoising_strength": 0.75}
    r = client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [
        unit(picture_a, save_detected_map=False)]}}})
    assert r.status_code == 200, r.text
    served = pixels(r.json()["images"][0], tmp_path)
    cli = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "cli-inpaint",
                           [dict(name="cn-a", image=tiny_controlnets.images["a"])], "--mask", tmp_path / "mask.png",
                           "--mask-blur", 4, img2img=dict(init=tmp_path / "init.png", strength=0.75))
    assert np.array_equal(served, cli)
    plain = client.post("/sdapi/v1/img2img", json=body)
    assert plain.status_code == 200, plain.text
    distance = moved(pixels(plain.json()["images"][0], tmp_path, "plain.png"), served)
    print(f"controlnet api inpainting: the unit moved it {distance}")
    assert distance > 2


def test_txt2img_inpaint_only_unit_with_its_own_mask_gives_generate_s_pixels(client, tiny_eps, tiny_controlnets,
                                                                                picture_a, tmp_path):
    """txt2img with an inpaint_only unit bringing its own mask ({"image", "mask"}): `sdcli generate
    --control-preprocessor inpaint_only --control-mask`'s pixels, the area outside the mask kept
    as the extension keeps it (tests/test_controlnet_inpaint_only.py)."""
    from sdcli.imaging.image_io import save_png

    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[8:40, 16:48] = 255
    save_png(tmp_path / "mask.png", mask)
    out = txt2img(client, {**unit(picture_a, module="inpaint_only", save_detected_map=False),
                           "image": {"image": b64(picture_a), "mask": b64(mask)}})
    served = pixels(out["images"][0], tmp_path)
    cli = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "cli-kept", [dict(name="cn-a",
                           image=tiny_controlnets.images["a"])], "--control-preprocessor", "inpaint_only",
                           "--control-mask", tmp_path / "mask.png")
    assert np.array_equal(served, cli)
    assert np.array_equal(served[60:, :], picture_a[60:, :])  # (far from the mask: the control image)


def test_other_scripts_are_refused(client):
    r = client.post("/sdapi/v1/txt2img", json={**BODY, "alwayson_scripts": {"ADetailer": {"args": [True]}}})
    assert r.status_code == 422 and r.json()["field"] == "alwayson_scripts", r.text
