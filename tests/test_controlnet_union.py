"""ControlNet Union (xinsir's controlnet-union-sdxl-1.0 and ProMax: diffusers' ControlNetUnionModel)
on the tiny SDXL: `sdcli convert` of a random ControlNetUnionModel folder (every layer randomised,
the zero-initialised ones too), `sdcli generate --controlnet U --control-type T` against diffusers'
StableDiffusionXLControlNetUnionPipeline (control_image=[...], control_mode=[...]); the control
type and the control image each move the picture; several control images in one unit
(`--control-type canny+depth`, ProMax's multi-condition) against the pipeline given both; the
infotext, the A1111 API's union_control_type, and the refusals."""
from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest

from tests.controlnets import SCHEDULER, moved

STEPS, SIZE = 3, 64


@pytest.fixture(scope="module")
def tiny_union(tiny_sdxl, models_root, tmp_path_factory):
    """A random ControlNet Union fitting tiny_sdxl (8 control types, as ProMax), converted at fp32
    into a ControlNet folder as `union`; beside it `plain` (its IR, with a plain ControlNet's config)
    and `union6` (its config with 6 control types, as the first Union): for the refusals; and two
    control images."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.convert.random_controlnet import build_random_controlnet_union
    from sdcli.imaging.image_io import save_png
    from tests.models import smooth_picture

    source = build_random_controlnet_union(tiny_sdxl.diffusers_dir / "unet", models_root / "union-src", seed=5)
    assert json.loads((source / "config.json").read_text())["_class_name"] == "ControlNetUnionModel"
    folder = models_root / "ControlNet-union"
    result = CliRunner().invoke(app, ["convert", str(source), "--weight-format", "fp32", "--output",
                                      str(folder / "union"), "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((folder / "union" / "config.json").read_text())
    for name, changes in (("plain", {"_class_name": "ControlNetModel"}), ("union6", {"num_control_type": 6})):
        shutil.copytree(folder / "union", folder / name)
        edited = {k: v for k, v in {**config, **changes}.items() if not (name == "plain" and k == "num_control_type")}
        (folder / name / "config.json").write_text(json.dumps(edited))
    images = tmp_path_factory.mktemp("union-control")
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    stripes = np.where(((x // 8) + (y // 16)) % 2 == 0, 230, 20).astype(np.uint8)
    files = {"a": images / "a.png", "b": images / "b.png"}
    save_png(files["a"], smooth_picture(SIZE, SIZE))
    save_png(files["b"], np.stack([stripes, 255 - stripes, stripes], axis=-1))
    return source, folder, files


@pytest.fixture(scope="module")
def pictures():
    return {}  # generate's pictures by name, made once for the tests here


def _ours(tiny_sdxl, folder, out, image, kind, *extra):
    from tests.reference import sdcli_pixels

    flags = ["--controlnet-dir", folder, "--controlnet", "union", "--control-image", image, "--control-type", kind]
    return sdcli_pixels(tiny_sdxl.ov_dir, out, *flags, *extra, steps=STEPS, scheduler=SCHEDULER, width=SIZE,
                        height=SIZE)


def _diffusers(tiny_sdxl, source, files, modes, **extra):
    """StableDiffusionXLControlNetUnionPipeline on tiny_sdxl with the Union `source`, the control
    images `files` and their `modes` (diffusers' control_image=[...], control_mode=[...])."""
    import diffusers
    import torch
    from PIL import Image

    from tests.reference import diffusers_scheduler, reference_arguments, to_pixels

    pipe = diffusers.StableDiffusionXLControlNetUnionPipeline(
        **tiny_sdxl.components(), add_watermarker=False,
        controlnet=diffusers.ControlNetUnionModel.from_pretrained(source, torch_dtype=torch.float32))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers_scheduler(SCHEDULER, pipe.scheduler.config)
    return to_pixels(pipe(**reference_arguments(steps=STEPS, width=SIZE, height=SIZE), **extra,
                          control_image=[Image.open(f).convert("RGB") for f in files], control_mode=modes).images)


def test_union_ir_takes_a_control_type(tiny_union):
    from sdcli.model.config_checks import ir_header

    _, folder, _ = tiny_union
    inputs = ir_header(folder / "union" / "openvino_model.xml")[1]
    assert "control_type" in inputs and "control_type_idx" in inputs and len(inputs["controlnet_cond"]) == 5


def test_union_matches_diffusers_and_type_and_image_move_it(tiny_sdxl, tiny_union, pictures, tmp_path, parity_log):
    """--control-type canny (Hard Edge: diffusers' control_mode 3) against
    StableDiffusionXLControlNetUnionPipeline(control_image=[image], control_mode=[3]); depth
    (mode 1) on the same image, and canny on another image, each move the picture by more than 2."""
    from sdcli.imaging.image_io import read_png_text
    from tests.reference import compare

    source, folder, images = tiny_union
    theirs = _diffusers(tiny_sdxl, source, [images["a"]], [3])
    ours = pictures["canny"] = _ours(tiny_sdxl, folder, tmp_path / "ours.png", images["a"], "canny")
    compare(ours, theirs, parity_log, model="sdxl", scheduler=SCHEDULER, mode="cn union", size=f"{SIZE}x{SIZE}")
    other_type = _ours(tiny_sdxl, folder, tmp_path / "depth.png", images["a"], "depth")
    other_image = _ours(tiny_sdxl, folder, tmp_path / "image-b.png", images["b"], "Hard Edge")
    print(f"controlnet union: max {np.abs(ours - theirs).max()} of 255 from diffusers; the control type moves it "
          f"by {moved(ours, other_type)}, the control image by {moved(ours, other_image)}")
    assert moved(ours, other_type) > 2
    assert moved(ours, other_image) > 2
    text = read_png_text(tmp_path / "ours.png")["parameters"]
    assert 'Model: union, ' in text and "Union Control Type: Hard Edge" in text
    # --from-image reads the unit back, its control type with it (the control image is given again)
    again = sdcli_generate_from(tiny_sdxl, folder, tmp_path, images["a"])
    assert again.read_bytes() == (tmp_path / "ours.png").read_bytes()


def sdcli_generate_from(tiny_sdxl, folder, tmp_path, *images, made="ours.png"):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    out = tmp_path / "again.png"
    given = [arg for image in images for arg in ("--control-image", str(image))]
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_sdxl.ov_dir), "--from-image",
                                      str(tmp_path / made), "--controlnet-dir", str(folder), *given,
                                      "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_union_several_images_in_one_call(tiny_sdxl, tiny_union, pictures, tmp_path, parity_log):
    """ProMax's multi-condition: one unit `--control-type canny+depth` with two control images
    against StableDiffusionXLControlNetUnionPipeline(control_image=[a, b], control_mode=[3, 1]) on
    the one ControlNetUnionModel; at weight 0.5 too (diffusers scales each condition inside the
    model when there are several, not the residuals).  The second image and mode move the picture
    from the one-image (canny) picture by more than 2; --from-image redoes it with both images."""
    from sdcli.imaging.image_io import read_png_text
    from tests.reference import compare

    source, folder, images = tiny_union
    pair = (images["a"], images["b"])
    flags = ["--control-image", str(images["b"])]
    theirs = _diffusers(tiny_sdxl, source, pair, [3, 1])
    ours = _ours(tiny_sdxl, folder, tmp_path / "two.png", images["a"], "canny+depth", *flags)
    compare(ours, theirs, parity_log, model="sdxl", scheduler=SCHEDULER, mode="cn union x2", size=f"{SIZE}x{SIZE}")
    half_theirs = _diffusers(tiny_sdxl, source, pair, [3, 1], controlnet_conditioning_scale=0.5)
    half = _ours(tiny_sdxl, folder, tmp_path / "half.png", images["a"], "canny+depth", *flags, "--control-weight", 0.5)
    compare(half, half_theirs, parity_log, model="sdxl", scheduler=SCHEDULER, mode="cn union x2 w0.5",
            size=f"{SIZE}x{SIZE}")
    single = pictures.get("canny")
    if single is None:  # run alone
        single = _ours(tiny_sdxl, folder, tmp_path / "one.png", images["a"], "canny")
    print(f"controlnet union, two images: max {np.abs(ours - theirs).max()} of 255 from diffusers (weight 0.5: "
          f"{np.abs(half - half_theirs).max()}); the second image and mode move it by {moved(ours, single)} from "
          f"the one-image picture; weight 0.5 moves it by {moved(ours, half)}")
    assert moved(ours, single) > 2
    assert moved(ours, half) > 2
    text = read_png_text(tmp_path / "two.png")["parameters"]
    assert "Union Control Type: Hard Edge+Depth" in text
    again = sdcli_generate_from(tiny_sdxl, folder, tmp_path, images["a"], images["b"], made="two.png")
    assert again.read_bytes() == (tmp_path / "two.png").read_bytes()


def test_union_infotext_reads_back(tiny_union):
    from sdcli.engine.controlnet import ControlUnit, infotext_fields, read_infotext

    _, _, images = tiny_union
    fields = infotext_fields([ControlUnit("union", images["a"], type="depth"), ControlUnit("cn", images["b"])])
    assert fields["ControlNet 0"].endswith("Control Mode: Balanced, Union Control Type: Depth")
    assert "Union" not in fields["ControlNet 1"]
    notes = []
    units = read_infotext({**fields, "ControlNet 1": fields["ControlNet 1"] + ", Union Control Type: Unknown"}, notes)
    assert [u["type"] for u in units] == ["depth", ""] and not notes
    fields = infotext_fields([ControlUnit("union", images["a"], type="canny+depth", more_images=(images["b"],))])
    assert fields["ControlNet 0"].endswith("Union Control Type: Hard Edge+Depth")
    assert [u["type"] for u in read_infotext(fields, notes)] == ["hardedge+depth"] and not notes


def test_batch_rows_take_a_control_type(tiny_union, tmp_path):
    """A row's control_type (or --control-type) goes on its unit and into its key."""
    from types import SimpleNamespace

    from sdcli.batch.controlnet_rows import control_units, key_settings

    _, _, images = tiny_union
    opts = SimpleNamespace(control={"controlnet": ["union"], "control_image": [str(images["a"])],
                                    "control_type": ["depth"]})
    (unit,) = control_units({}, opts, tmp_path)
    (row,) = control_units({"control_type": "Hard Edge"}, opts, tmp_path)
    assert (unit.type_index, row.type_index) == (1, 3)
    assert key_settings((unit,))[0]["type"] == "depth" and key_settings((row,)) != key_settings((unit,))
    with pytest.raises(ValueError, match="control_type must be one of"):
        control_units({"control_type": "sketchy"}, opts, tmp_path)
    # several control types: one control image each, in order, all of them in the key
    (two,) = control_units({"control_type": "canny+depth", "control_image": ["a.png", "b.png"]}, opts, images["a"].parent)
    assert (two.type_indices, two.image, two.more_images) == ((3, 1), images["a"], (images["b"],))
    settings = key_settings((two,))[0]
    assert settings["type"] == "canny+depth" and len(settings["more_images"]) == 1
    with pytest.raises(ValueError, match="one per control type of a Union unit that has several"):
        control_units({"control_type": "canny+depth"}, opts, tmp_path)


def test_union_refusals(tiny_sdxl, tiny_union, tmp_path):
    """A Union without a control type, a control type on a plain ControlNet, a type the Union does
    not know, a type that is none: one line, exit 2, nothing written."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from tests.reference import generate_args
    from tests.test_bad_input import assert_refused

    _, folder, images = tiny_union
    # a Union converted for one control image a call (before control_type_idx): its IR's header only
    earlier = tmp_path / "union1"
    earlier.mkdir()
    shutil.copy(folder / "union" / "config.json", earlier)
    xml = (folder / "union" / "openvino_model.xml").read_text()
    (earlier / "openvino_model.xml").write_text(xml.replace("control_type_idx", "control_type_old"))
    out = tmp_path / "refused.png"
    base = generate_args(tiny_sdxl.ov_dir, out, "--controlnet-dir", folder, "--control-image", images["a"],
                         steps=STEPS, width=SIZE, height=SIZE)
    for extra, needle in (
            (["--controlnet", "union"], "is a ControlNet Union: give its --control-type"),
            (["--controlnet", "plain", "--control-type", "canny"], "plain is not a ControlNet Union"),
            (["--controlnet", "union6", "--control-type", "tile"], "knows 6 control types"),
            (["--controlnet", "union", "--control-type", "sketchy"], "--control-type must be one of"),
            (["--control-type", "canny"], "--control-type is for a ControlNet unit"),
            (["--controlnet", "union", "--control-type", "canny+depth"], "one per control type of a Union unit"),
            (["--controlnet", "union", "--control-type", "canny+none", "--control-image", str(images["b"])],
             "none of them empty"),
            (["--controlnet", "plain", "--control-type", "canny+depth", "--control-image", str(images["b"])],
             "plain is not a ControlNet Union"),
            (["--controlnet", str(earlier), "--control-type", "canny+depth", "--control-image", str(images["b"])],
             "converted by an earlier sdcli")):
        args = [a for a in base if a not in ("--control-image", str(images["a"]))] if "--controlnet" not in extra \
            else base
        assert_refused(CliRunner().invoke(app, [*args, *extra]), 2, needle)
        assert not out.exists()


def test_union_in_the_a1111_api(tiny_sdxl, tiny_union, pictures, tmp_path):
    """A unit's union_control_type (webuiapi's "Hard Edge") gives generate's pixels with
    --control-type canny; a Union unit without one, or a type on a plain ControlNet: 422."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from sdcli.imaging.image_io import encode_png, read_rgb
    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker
    from tests.reference import NEGATIVE, PROMPT, SEED

    _, folder, images = tiny_union
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "sampler_name": "Euler",
            "cfg_scale": 7.5, "width": SIZE, "height": SIZE}
    picture = base64.b64encode(encode_png(read_rgb(images["a"]))).decode()
    unit = {"enabled": True, "model": "union", "image": picture, "module": "none", "resize_mode": "Crop and Resize",
            "union_control_type": "Hard Edge", "save_detected_map": False}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDCLI_CONTROLNET_DIR", str(folder))
        worker = Worker(ModelRegistry(None, tiny_sdxl.ov_dir), tiny_sdxl.ov_dir.resolve().name, queue_size=4,
                        precision="f32")
        worker.start(warm_up=False)
        try:
            client = TestClient(create_app(worker))
            for bad, needle in (({"union_control_type": None}, "is a ControlNet Union"),
                                ({"union_control_type": "Sketch"}, "union_control_type must be one of"),
                                ({"model": "plain"}, "not a ControlNet Union")):
                r = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {
                    "ControlNet": {"args": [{**unit, **bad}]}}})
                assert r.status_code == 422, r.text
                assert needle in r.text and "union_control_type" in r.text
            r = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
            assert r.status_code == 200, r.text
        finally:
            worker.stop()
            worker.join(30)
    served = tmp_path / "served.png"
    served.write_bytes(base64.b64decode(r.json()["images"][0]))
    cli = pictures.get("canny")
    if cli is None:  # run alone
        cli = _ours(tiny_sdxl, folder, tmp_path / "cli.png", images["a"], "canny")
    assert moved(read_rgb(served).astype(np.int16), cli) == 0


def test_union_config_from_real_shapes():
    """The ControlNetUnionModel config inferred from the tensor shapes of xinsir's SDXL Union
    architecture (ProMax's 8 control types; on torch's meta device) builds the same tensors."""
    import torch
    from diffusers import ControlNetUnionModel

    from sdcli.convert.controlnet_file import layout, union_config

    sdxl = dict(block_out_channels=[320, 640, 1280], layers_per_block=2, cross_attention_dim=2048,
                attention_head_dim=[5, 10, 20], use_linear_projection=True, transformer_layers_per_block=[1, 2, 10],
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, conditioning_embedding_out_channels=[16, 32, 96, 256],
                num_control_type=8)
    with torch.device("meta"):
        model = ControlNetUnionModel(**sdxl)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert layout(shapes) == "diffusers"
    inferred = union_config(shapes)
    for key, value in sdxl.items():
        assert inferred[key] == value, key
    assert (inferred["num_trans_channel"], inferred["num_proj_channel"], inferred["num_trans_layer"]) == (320, 320, 1)
    with torch.device("meta"):
        rebuilt = ControlNetUnionModel.from_config({k: v for k, v in inferred.items() if not k.startswith("_")})
    assert {n: tuple(t.shape) for n, t in rebuilt.state_dict().items()} == shapes


def test_a_union_single_file_loads_as_its_folder(tiny_union, tmp_path):
    """xinsir's files are diffusers-named single files (diffusion_pytorch_model_promax.safetensors):
    `sdcli convert` takes one for a ControlNet, and reads it (with --config: the tiny widths are
    not SDXL's 64 channels a head that inference assumes) into the folder's ControlNetUnionModel,
    tensor for tensor, which then exports as the folder does."""
    import torch
    from diffusers import ControlNetUnionModel

    from sdcli.convert.controlnet import load_controlnet
    from sdcli.convert.controlnet_file import controlnet_file
    from sdcli.convert.options import ConvertOptions

    source, _, _ = tiny_union
    single = tmp_path / "union_promax.safetensors"
    shutil.copyfile(source / "diffusion_pytorch_model.safetensors", single)
    assert controlnet_file(single, False) == "diffusers"
    ours = load_controlnet(str(single), single, ConvertOptions(config=str(source)))
    theirs = ControlNetUnionModel.from_pretrained(source, torch_dtype=torch.float32)
    assert type(ours) is ControlNetUnionModel
    for key in ("num_control_type", "num_trans_channel", "num_proj_channel", "num_trans_head", "num_trans_layer"):
        assert ours.config[key] == theirs.config[key], key
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert set(mine) == set(reference)
    assert all(torch.equal(mine[k], reference[k]) for k in reference)
