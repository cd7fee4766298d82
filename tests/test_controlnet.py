"""ControlNet: the UNet's load-time residual inputs against diffusers' UNet2DConditionModel,
`sdcli convert` of a ControlNetModel, and `sdcli generate --controlnet` against diffusers'
ControlNet pipelines (txt2img, img2img, several units, guess mode, guidance start/end) on
tiny random models whose every layer is randomised (diffusers' zero convolutions would make
the control image change nothing)."""
from __future__ import annotations

import numpy as np
import pytest


def _edited_unet(model, batch=2, hw=(8, 8), seq=77, variant="controlnet"):
    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import UNet
    from sdcli.runtime.core import Runtime

    folder = ModelFolder.open(model.ov_dir)
    return UNet(Runtime("CPU", "f32", None), folder, UNet.input_shapes(folder, batch, hw, seq), variant)


def test_unet_residual_inputs_match_diffusers(tiny_eps):
    """The edited IR with residuals equals diffusers' UNet called with
    down_block_additional_residuals / mid_block_additional_residual; with zeros it equals the
    IR as it is."""
    import torch

    from sdcli.runtime.controlnet import MID, down_name, residual_count, residual_shapes

    plain, edited = _edited_unet(tiny_eps, variant=None), _edited_unet(tiny_eps)
    shapes = residual_shapes(edited.compiled)
    unet = tiny_eps.pipe().unet
    count = residual_count(dict(unet.config))
    assert set(shapes) == {MID, *(down_name(i) for i in range(count))}
    rs = np.random.default_rng(0)
    x = rs.standard_normal((2, 4, 8, 8)).astype(np.float32)
    context = rs.standard_normal((2, 77, 32)).astype(np.float32)
    residuals = {name: rs.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    zeros = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    plain_out = plain(x, 421.0, context)
    np.testing.assert_allclose(edited(x, 421.0, context, **zeros), plain_out, rtol=0, atol=1e-5)
    ours = edited(x, 421.0, context, **residuals)
    with torch.no_grad():
        theirs = unet(torch.from_numpy(x), torch.tensor([421.0, 421.0]), torch.from_numpy(context),
                      down_block_additional_residuals=[torch.from_numpy(residuals[down_name(i)]) for i in range(count)],
                      mid_block_additional_residual=torch.from_numpy(residuals[MID]), return_dict=False)[0].numpy()
    assert np.abs(ours - plain_out).max() > 0.1  # the residuals move the output
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    # each residual is used (a mix-up of two same-shaped skips would change this)
    for name in shapes:
        one = dict(zeros, **{name: residuals[name]})
        with torch.no_grad():
            ref = unet(torch.from_numpy(x), torch.tensor([421.0, 421.0]), torch.from_numpy(context),
                       down_block_additional_residuals=[torch.from_numpy(one[down_name(i)]) for i in range(count)],
                       mid_block_additional_residual=torch.from_numpy(one[MID]), return_dict=False)[0].numpy()
        np.testing.assert_allclose(edited(x, 421.0, context, **one), ref, rtol=0, atol=1e-4, err_msg=name)


def test_a_graph_without_skip_concats_is_refused():
    import openvino as ov
    from openvino import opset13 as ops

    from sdcli.runtime.controlnet import add_residual_inputs
    from sdcli.util.errors import UsageError

    sample = ops.parameter([1, 4, 8, 8], ov.Type.f32, name="sample")
    sample.output(0).get_tensor().set_names({"sample"})
    model = ov.Model([ops.result(ops.relu(sample))], [sample])
    with pytest.raises(UsageError, match="skip connections"):
        add_residual_inputs(model, {"sample": [1, 4, 8, 8]})


# --- ControlNet models and generate, against diffusers' ControlNet pipelines (tests/controlnets.py) ---

from tests.controlnets import SCHEDULER, SIZE, STEPS, diffusers_controlnet, moved, sdcli_controlnet  # noqa: E402


@pytest.fixture(scope="session")
def no_control(tiny_eps, tmp_path_factory):
    from tests.reference import sdcli_pixels

    return sdcli_pixels(tiny_eps.ov_dir, tmp_path_factory.mktemp("plain") / "plain.png", steps=STEPS,
                        scheduler=SCHEDULER, width=SIZE, height=SIZE)


CASES = {  # name: (units, generate's extra flags, diffusers' guess_mode, what it is compared with to show it moves)
    "balanced": ([dict(name="cn-a", image="a")], [], False, "plain"),
    "other image": ([dict(name="cn-a", image="b")], [], False, "balanced"),
    "weight .5": ([dict(name="cn-a", image="a", scale=0.5)], [], False, "balanced"),
    "start .25 end .75": ([dict(name="cn-a", image="a", start=0.25, end=0.75)], [], False, "balanced"),
    "guess mode": ([dict(name="cn-a", image="a")], ["--control-mode", "controlnet"], True, "balanced"),
    "two units": ([dict(name="cn-a", image="a", scale=0.7), dict(name="cn-b", image="b", start=0.5)], [], False,
                  "weight .5"),
}


@pytest.fixture(scope="session")
def case_pictures():
    return {}


@pytest.mark.parametrize("case", list(CASES))
def test_controlnet_matches_diffusers(case, tiny_eps, tiny_controlnets, no_control, case_pictures, tmp_path,
                                      parity_log):
    from tests.reference import compare

    units, flags, guess, against = CASES[case]
    units = [dict(unit, image=tiny_controlnets.images[unit["image"]]) for unit in units]
    ours = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "ours", units, *flags)
    theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, units, guess_mode=guess)
    compare(ours, theirs, parity_log, model="epsilon", scheduler=SCHEDULER, mode=f"cn {case}"[:14],
            size="64x64")
    case_pictures[case] = ours
    reference = no_control if against == "plain" else case_pictures.get(against)
    if reference is None:  # run alone: make the picture it is compared with
        a_units, a_flags, _, _ = CASES[against]
        a_units = [dict(unit, image=tiny_controlnets.images[unit["image"]]) for unit in a_units]
        reference = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "against", a_units, *a_flags)
    distance = moved(ours, reference)
    print(f"controlnet {case}: max {np.abs(ours - theirs).max()}, moved {distance} from {against}")
    assert distance > 2, f"{case} moves the picture by {distance} only from {against}"


def test_controlnet_img2img_matches_diffusers(tiny_eps, tiny_controlnets, init_image_file, tmp_path, parity_log):
    """StableDiffusionControlNetImg2ImgPipeline: the init image (96x64) and a control image of its size."""
    from tests.reference import compare

    img2img = {"init": init_image_file, "strength": 0.75}
    units = [dict(name="cn-a", image=tiny_controlnets.images["wide"], scale=0.8)]
    ours = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "ours", units, img2img=img2img)
    theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, units, img2img=img2img)
    compare(ours, theirs, parity_log, model="epsilon", scheduler=SCHEDULER, mode="cn img2img .75", size="96x64")
    plain = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "other", [dict(units[0], scale=0.3)],
                             img2img=img2img)
    print(f"controlnet img2img: max {np.abs(ours - theirs).max()}, weight .8 vs .3 moved {moved(ours, plain)}")
    assert moved(ours, plain) > 2


def test_prompt_mode_is_a1111_soft_injection(tiny_eps, tiny_controlnets, tmp_path, parity_log):
    """--control-mode prompt (A1111's "My prompt is more important"): residual k of n + 1 scaled by
    0.825 ** (n - k), against diffusers' pipeline with its ControlNet's outputs scaled so."""
    from tests.reference import compare

    units = [dict(name="cn-a", image=tiny_controlnets.images["a"])]
    ours = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "ours", units, "--control-mode", "prompt")
    net = tiny_controlnets.model("cn-a")
    original = net.forward

    def soft(*args, **kwargs):
        down, mid = original(*args, **kwargs)
        n = len(down)
        return [d * 0.825 ** (n - k) for k, d in enumerate(down)], mid

    net.forward = soft
    try:
        theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, units)
    finally:
        del net.forward
    compare(ours, theirs, parity_log, model="epsilon", scheduler=SCHEDULER, mode="cn prompt mode", size="64x64")
    balanced = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "balanced", units)
    print(f"controlnet prompt mode: max {np.abs(ours - theirs).max()}, moved {moved(ours, balanced)} from balanced")
    assert moved(ours, balanced) > 2


def test_canny_preprocessor(tiny_eps, tiny_controlnets, tmp_path, parity_log):
    """--control-preprocessor canny: diffusers given OpenCV's Canny map (100, 200) of the image."""
    import cv2

    from sdcli.imaging.image_io import read_rgb, save_png
    from tests.reference import compare

    image = tiny_controlnets.images["b"]
    edges = cv2.Canny(read_rgb(image), 100, 200)
    assert 0 < (edges > 0).mean() < 0.5
    edge_file = tmp_path / "edges.png"
    save_png(edge_file, np.repeat(edges[:, :, None], 3, axis=2))
    units = [dict(name="cn-b", image=image)]
    ours = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "ours", units, "--control-preprocessor", "canny")
    theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, [dict(units[0], image=edge_file)])
    compare(ours, theirs, parity_log, model="epsilon", scheduler=SCHEDULER, mode="cn canny", size="64x64")
    raw = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "raw", units)
    print(f"controlnet canny: max {np.abs(ours - theirs).max()}, moved {moved(ours, raw)} from the raw image")
    assert moved(ours, raw) > 2


def test_resize_modes():
    from sdcli.imaging.control import fit
    from sdcli.imaging.image_io import resize
    from tests.models import smooth_picture

    wide = smooth_picture(96, 64)  # W 96, H 64
    np.testing.assert_array_equal(fit(wide, 64, 64, "crop-and-resize"), wide[:, 16:80])
    np.testing.assert_array_equal(fit(wide, 64, 64, "just-resize"), resize(wide, 64, 64))
    filled = fit(wide, 64, 64, "resize-and-fill")
    border = np.concatenate([wide[0], wide[-1], wide[:, 0], wide[:, -1]])
    np.testing.assert_array_equal(filled[:10], np.broadcast_to(np.median(border, axis=0).astype(np.uint8), (10, 64, 3)))
    np.testing.assert_array_equal(filled[10:53], resize(wide, 64, 43))
    tall = fit(wide, 48, 96, "crop-and-resize")  # scaled up by 1.5 to cover 48x96, the middle kept
    np.testing.assert_array_equal(tall, resize(wide, 144, 96)[:, 48:96])
    for mode in ("just-resize", "crop-and-resize", "resize-and-fill"):
        assert fit(wide, 40, 72, mode).shape == (72, 40, 3)


def test_resize_mode_moves_the_picture(tiny_eps, tiny_controlnets, tmp_path):
    units = [dict(name="cn-a", image=tiny_controlnets.images["wide"])]
    pictures = {mode: sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, mode, units, "--control-resize", mode)
                for mode in ("just-resize", "crop-and-resize", "resize-and-fill")}
    assert moved(pictures["just-resize"], pictures["crop-and-resize"]) > 2
    assert moved(pictures["crop-and-resize"], pictures["resize-and-fill"]) > 2


def test_fp16_and_int8_controlnets_convert_and_run(tiny_eps, tiny_controlnets, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    units = [dict(name="cn-a", image=tiny_controlnets.images["a"])]
    full = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "fp32", units)
    folder = tmp_path / "cn"
    for weight_format in ("fp16", "int8"):
        result = CliRunner().invoke(app, ["convert", str(tiny_controlnets.sources["cn-a"]), "--weight-format",
                                          weight_format, "--output", str(folder / weight_format), "--quiet"])
        assert result.exit_code == 0, result.output
        assert (folder / weight_format / "sdcli.json").read_text().count(weight_format)
        small = CliRunner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--prompt", "a", "--steps", "2",
                                         "--width", "64", "--height", "64", "--controlnet", str(folder / weight_format),
                                         "--control-image", str(tiny_controlnets.images["a"]),
                                         "--output", str(tmp_path / f"{weight_format}.png"), "--quiet"])
        assert small.exit_code == 0, small.output
    assert full.std() > 10


def test_bad_controlnet_input(tiny_eps, tiny_controlnets, tmp_path):
    import json
    import shutil

    from tests.test_bad_input import assert_refused, invoke

    out = tmp_path / "out.png"
    base = ["generate", "--model", tiny_eps.ov_dir, "--prompt", "a", "--steps", "2", "--width", "64", "--height", "64",
            "--output", out, "--controlnet-dir", tiny_controlnets.folder]
    image = tiny_controlnets.images["a"]
    assert_refused(invoke(*base, "--controlnet", "nope", "--control-image", image), 2, "--controlnet nope")
    assert_refused(invoke(*base, "--controlnet", "nope", "--control-image", image), 2, str(tiny_controlnets.folder))
    not_png = tmp_path / "broken.png"
    not_png.write_text("not an image")
    assert_refused(invoke(*base, "--controlnet", "cn-a", "--control-image", not_png), 2, "--control-image")
    assert_refused(invoke(*base, "--controlnet", "cn-a", "--control-image", tmp_path / "missing.png"), 2,
                   "--control-image")
    xl = tmp_path / "ControlNet" / "xl"
    shutil.copytree(tiny_controlnets.folder / "cn-a", xl)
    config = json.loads((xl / "config.json").read_text())
    (xl / "config.json").write_text(json.dumps(dict(config, addition_embed_type="text_time")))
    assert_refused(invoke(*base[:-2], "--controlnet-dir", xl.parent, "--controlnet", "xl", "--control-image", image),
                   2, "for SDXL models")
    assert_refused(invoke(*base, "--control-image", image), 2, "--controlnet")
    assert_refused(invoke(*base, "--controlnet", "cn-a", "--controlnet", "cn-b", "--control-image", image), 2,
                   "one control image per ControlNet")
    assert_refused(invoke(*base, "--controlnet", "cn-a", "--control-image", image, "--control-start", "0.8",
                          "--control-end", "0.2"), 2, "--control-start")
    assert_refused(invoke(*base, "--controlnet", "cn-a", "--control-image", image, "--control-mode", "loud"), 2,
                   "--control-mode")
    assert not out.exists()


def test_infotext_is_written_and_read_back(tiny_eps, tiny_controlnets, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.imaging.image_io import read_png_text
    from tests.test_bad_input import assert_refused

    images = tiny_controlnets.images
    units = [dict(name="cn-a", image=images["a"], scale=0.6, start=0.25), dict(name="cn-b", image=images["b"])]
    first = tmp_path / "first.png"
    sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "first", units, "--control-preprocessor", "canny",
                     "--control-preprocessor", "none", "--control-mode", "controlnet", "--control-mode", "balanced",
                     "--control-resolution", "128", "--control-resolution", "pixel-perfect")
    text = read_png_text(first)["parameters"]
    assert ('ControlNet 0: "Module: canny, Model: cn-a, Weight: 0.6, Resize Mode: Crop and Resize, Processor Res: 128, '
            'Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.25, Guidance End: 1.0, Pixel Perfect: False, '
            'Control Mode: ControlNet is more important"') in text
    assert ('ControlNet 1: "Module: none, Model: cn-b, Weight: 1.0, Resize Mode: Crop and Resize, Guidance Start: 0.0, '
            'Guidance End: 1.0, Pixel Perfect: True, Control Mode: Balanced"') in text
    again = tmp_path / "again.png"
    base = ["generate", "--model", str(tiny_eps.ov_dir), "--from-image", str(first), "--output", str(again), "--quiet",
            "--controlnet-dir", str(tiny_controlnets.folder)]
    result = CliRunner().invoke(app, [*base, "--control-image", str(images["a"]), "--control-image", str(images["b"])])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == first.read_bytes()
    assert_refused(CliRunner().invoke(app, base), 2, "pass --control-image for each")


# --- SDXL: the ControlNet also takes text_embeds and time_ids ------------------------------------


@pytest.fixture(scope="session")
def tiny_sdxl_controlnet(tiny_sdxl, models_root):
    """A random ControlNet fitting tiny_sdxl (every layer randomised), converted at fp32."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.convert.random_controlnet import build_random_controlnet

    source = build_random_controlnet(tiny_sdxl.diffusers_dir / "unet", models_root / "cn-xl-src", seed=3)
    folder = models_root / "ControlNet-xl"
    result = CliRunner().invoke(app, ["convert", str(source), "--weight-format", "fp32", "--output",
                                      str(folder / "cn-xl"), "--quiet"])
    assert result.exit_code == 0, result.output
    return source, folder


@pytest.mark.parametrize("guess", [False, True])
def test_sdxl_controlnet_matches_diffusers(guess, tiny_sdxl, tiny_sdxl_controlnet, tiny_controlnets, tmp_path,
                                           parity_log):
    import diffusers
    import torch
    from PIL import Image

    from tests.reference import compare, diffusers_scheduler, reference_arguments, sdcli_pixels, to_pixels

    source, folder = tiny_sdxl_controlnet
    image = tiny_controlnets.images["a"]
    pipe = diffusers.StableDiffusionXLControlNetPipeline(
        **tiny_sdxl.components(), add_watermarker=False,
        controlnet=diffusers.ControlNetModel.from_pretrained(source, torch_dtype=torch.float32))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers_scheduler(SCHEDULER, pipe.scheduler.config)
    theirs = to_pixels(pipe(**reference_arguments(steps=STEPS, width=SIZE, height=SIZE),
                            image=Image.open(image).convert("RGB"), guess_mode=guess).images)
    flags = ["--controlnet-dir", folder, "--controlnet", "cn-xl", "--control-image", image]
    mode = ["--control-mode", "controlnet"] if guess else []
    ours = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "ours.png", *flags, *mode, steps=STEPS, scheduler=SCHEDULER,
                        width=SIZE, height=SIZE)
    compare(ours, theirs, parity_log, model="sdxl", scheduler=SCHEDULER, mode="cn guess" if guess else "cn balanced",
            size="64x64")
    other = sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / "other.png", *(flags if guess else []),
                         steps=STEPS, scheduler=SCHEDULER, width=SIZE, height=SIZE)
    print(f"sdxl controlnet guess={guess}: max {np.abs(ours - theirs).max()}, moved {moved(ours, other)} from "
          f"{'balanced' if guess else 'no ControlNet'}")
    assert moved(ours, other) > 2


def test_sdxl_controlnet_with_a_refiner_matches_diffusers(tiny_sdxl, tiny_sdxl_refiner, tiny_sdxl_controlnet,
                                                          tiny_controlnets, tmp_path, parity_log):
    """--controlnet with --refiner: diffusers' StableDiffusionXLControlNetPipeline(denoising_end,
    output_type="latent") handing its latents to StableDiffusionXLImg2ImgPipeline(denoising_start),
    one generator through both.  6 steps, switch 0.6: the base runs 3.  End 0.34 counts over all 6
    (diffusers' controlnet_keep is worked out before the cut): the unit runs on the base's first
    two steps, where counting over the base's 3 would run it on the first only (end 0.2 here)."""
    import diffusers
    import torch
    from PIL import Image

    from sdcli.imaging.image_io import read_png_text
    from tests.reference import compare, diffusers_scheduler, reference_arguments, sdcli_pixels, to_pixels

    source, folder = tiny_sdxl_controlnet
    steps, switch, end = 6, 0.6, 0.34
    base = diffusers.StableDiffusionXLControlNetPipeline(
        **tiny_sdxl.components(), add_watermarker=False,
        controlnet=diffusers.ControlNetModel.from_pretrained(source, torch_dtype=torch.float32))
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline(**tiny_sdxl_refiner.components(), add_watermarker=False,
                                                         requires_aesthetics_score=True,
                                                         force_zeros_for_empty_prompt=False)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = diffusers_scheduler(SCHEDULER, pipe.scheduler.config)
    args = reference_arguments(steps=steps)
    latents = base(**dict(args, output_type="latent"), width=SIZE, height=SIZE, control_guidance_end=end,
                   image=Image.open(tiny_controlnets.images["a"]).convert("RGB"), denoising_end=switch).images
    theirs = to_pixels(refiner(**args, image=latents, denoising_start=switch).images)

    def ours(name, image="a", end=end, refine=True):
        flags = ["--controlnet-dir", folder, "--controlnet", "cn-xl", "--control-image",
                 tiny_controlnets.images[image], "--control-end", end]
        flags += ["--refiner", tiny_sdxl_refiner.ov_dir, "--refiner-switch", switch] if refine else []
        return sdcli_pixels(tiny_sdxl.ov_dir, tmp_path / f"{name}.png", *flags, steps=steps, scheduler=SCHEDULER,
                            width=SIZE, height=SIZE)

    picture = ours("ours")
    compare(picture, theirs, parity_log, model="sdxl + refiner", scheduler=SCHEDULER, mode="cn, switch 0.6",
            size="64x64")
    text = read_png_text(tmp_path / "ours.png")["parameters"]
    assert 'ControlNet 0: "Module: none, Model: cn-xl, Weight: 1.0' in text and "Guidance End: 0.34" in text
    image, first_only, alone = ours("image", image="b"), ours("first", end=0.2), ours("alone", refine=False)
    print(f"sdxl controlnet + refiner: max {np.abs(picture - theirs).max()}; moved {moved(picture, image)} by "
          f"another control image, {moved(picture, first_only)} by end 0.2, {moved(picture, alone)} by the refiner")
    assert min(moved(picture, image), moved(picture, first_only), moved(picture, alone)) > 2


def test_controlnet_on_an_optimum_cli_folder(tiny_eps, tiny_controlnets, tmp_path, parity_log):
    """The folder optimum-cli wrote from tiny_eps's weights (tests/data/optimum-tiny): its UNet graph
    takes the residuals the same way, and gives diffusers' pixels."""
    from pathlib import Path

    from tests.reference import compare

    class Optimum:
        ov_dir = Path(__file__).parent / "data" / "optimum-tiny"

    units = [dict(name="cn-a", image=tiny_controlnets.images["a"])]
    ours = sdcli_controlnet(Optimum, tiny_controlnets, tmp_path, "ours", units)
    theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, units)
    compare(ours, theirs, parity_log, model="optimum-cli", scheduler=SCHEDULER, mode="cn balanced", size="64x64")


def test_the_controlnet_compiled_at_preload_is_the_one_the_loop_runs(tiny_eps, tiny_controlnets):
    """engine.preload starts compiling each ControlNet beside the UNet, for the shapes the loop calls
    it with (guess mode: the prompt's row only): nothing is compiled a second time."""
    from sdcli.engine.controlnet import ControlUnit
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=False, controlnet_dir=tiny_controlnets.folder)
    units = (ControlUnit("cn-a", tiny_controlnets.images["a"]),
             ControlUnit("cn-b", tiny_controlnets.images["b"], mode="controlnet"))
    request = GenerationRequest(prompt="a", steps=2, width=64, height=64, controlnets=units)
    engine.preload(request)
    started = {key for key in engine.components._components if key[0] == "controlnet"}
    assert len(started) == 2
    engine.generate(request)
    assert {key for key in engine.components._components if key[0] == "controlnet"} == started
    assert dict(next(iter(k for k in started if "cn-b" in k[1]))[2])["sample"][0] == 1  # the prompt's row only


def test_without_a_controlnet_the_unet_is_compiled_as_before(tiny_eps):
    """No unit: the UNet component is the unedited one (variant None, no residual inputs), and no
    ControlNet is compiled."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=False)
    unet = engine.preload(GenerationRequest(prompt="a", steps=2, width=64, height=64))[0].result()
    keys = list(engine.components._components)
    assert [key[2] for key in keys if key[0] == "unet"] == [None]
    assert not [key for key in keys if key[0] == "controlnet"]
    assert not [port for port in unet.compiled.inputs if any("block_res" in n for n in port.get_names())]
