"""ControlNet beyond txt2img and img2img (issue 22, the engine slice): inpainting with a ControlNet
against diffusers' StableDiffusionControlNetInpaintPipeline (an ordinary 4-channel UNet, whose
kept region is blended back after every step, and a 9-channel inpainting UNet), ControlNet rows
in `sdcli batch`, --deepcache with a ControlNet, and the memory estimate counting each unit.

Cheap: the session's tiny models and ControlNets (tests/conftest.py), 64x64 or 96x64, 4 steps."""
from __future__ import annotations

import numpy as np
import pytest

from tests.controlnets import SCHEDULER, STEPS, moved

# --- inpainting ------------------------------------------------------------------------------------


def diffusers_inpaint(components: dict, controlnets, unit: dict, init, mask, strength: float) -> np.ndarray:
    """diffusers' StableDiffusionControlNetInpaintPipeline with one unit (name, image, scale)."""
    import diffusers
    from PIL import Image

    from tests.reference import diffusers_scheduler, reference_arguments, to_pixels

    pipe = diffusers.StableDiffusionControlNetInpaintPipeline(**components, controlnet=controlnets.model(unit["name"]))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers_scheduler(SCHEDULER, pipe.scheduler.config)
    args = reference_arguments(steps=STEPS, init_image=init, strength=strength, mask=mask)
    return to_pixels(pipe(**args, control_image=Image.open(unit["image"]).convert("RGB"),
                          controlnet_conditioning_scale=unit.get("scale", 1.0)).images)


def sdcli_inpaint(model_dir, controlnets, out, unit: dict | None, init, mask, strength: float, *flags) -> np.ndarray:
    from tests.reference import sdcli_pixels

    extra = ["--controlnet-dir", controlnets.folder]
    if unit is not None:
        extra += ["--controlnet", unit["name"], "--control-image", unit["image"],
                  "--control-weight", unit.get("scale", 1.0)]
    return sdcli_pixels(model_dir, out, *extra, *flags, steps=STEPS, scheduler=SCHEDULER, init_image=init, mask=mask,
                        mask_blur=0, strength=strength)


@pytest.fixture(scope="module")
def tiny_inpaint9(models_root):
    """A tiny dedicated inpainting model (9-channel UNet) shaped like tiny_eps, so that its
    ControlNets (cn-a, cn-b) fit it."""
    from tests.models import build_tiny_inpaint

    return build_tiny_inpaint(models_root / "inpaint9")


@pytest.mark.parametrize("kind", ["4ch", "9ch"])
def test_controlnet_inpainting_matches_diffusers(kind, request, tiny_controlnets, inpaint_files, tmp_path, parity_log):
    """--controlnet with --mask: the control image fitted to the init image (96x64); 4 channels:
    the kept region blended back after every step as diffusers does; 9 channels: the ControlNet
    reads the latents only, the UNet [latents, mask, masked image]."""
    from tests.reference import compare

    if kind == "4ch":
        model = request.getfixturevalue("tiny_eps")
        components, strength = dict(model.pipe().components), 0.75
    else:
        model = request.getfixturevalue("tiny_inpaint9")
        components, strength = model.components(), 1.0
    init, mask = inpaint_files[(96, 64)]
    unit = dict(name="cn-a", image=tiny_controlnets.images["wide"], scale=0.8)
    ours = sdcli_inpaint(model.ov_dir, tiny_controlnets, tmp_path / "ours.png", unit, init, mask, strength)
    theirs = diffusers_inpaint(components, tiny_controlnets, unit, init, mask, strength)
    compare(ours, theirs, parity_log, model=f"inpaint {kind}", scheduler=SCHEDULER, mode=f"cn inpaint {strength}",
            size="96x64")
    weaker = sdcli_inpaint(model.ov_dir, tiny_controlnets, tmp_path / "weaker.png", dict(unit, scale=0.3), init, mask,
                           strength)
    plain = sdcli_inpaint(model.ov_dir, tiny_controlnets, tmp_path / "plain.png", None, init, mask, strength)
    print(f"controlnet inpaint {kind}: max {np.abs(ours - theirs).max()}, weight .8 vs .3 moved {moved(ours, weaker)}, "
          f"vs no ControlNet {moved(ours, plain)}")
    assert moved(ours, weaker) > 2 and moved(ours, plain) > 2
    keep = np.asarray(__import__("cv2").imread(str(mask), 0)) < 128
    if kind == "4ch":  # the kept region stays the init image's (up to the VAE's round trip)
        assert np.abs(ours[keep] - plain[keep]).mean() < np.abs(ours[~keep] - plain[~keep]).mean()


# --- sdcli batch ----------------------------------------------------------------------------------


def _batch(*args):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_batch_rows_take_controlnet_units_and_a_changed_control_image_redoes_the_row(tiny_eps, tiny_controlnets,
                                                                                      tmp_path, parity_log):
    """A row's unit (controlnet, control_image relative to FILE, control_weight), the command line's
    unit (--controlnet/--control-image), and a row without one ("controlnet": ""): each row's PNG is
    generate's with the same unit; a re-run skips all three; a changed control image (same path)
    makes its row again."""
    import json
    import shutil

    from sdcli.imaging.image_io import read_png_text, read_rgb
    from tests.reference import NEGATIVE, PROMPT, sdcli_pixels

    images = tiny_controlnets.images
    shutil.copy(images["a"], tmp_path / "ctl.png")
    rows = [{"prompt": PROMPT, "seed": 1, "name": "a", "controlnet": "cn-a", "control_image": "ctl.png",
             "control_weight": 0.7},
            {"prompt": PROMPT, "seed": 2, "name": "b"},
            {"prompt": PROMPT, "seed": 1, "name": "c", "controlnet": ""}]
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    command = ["batch", file, "-o", out, "--model", tiny_eps.ov_dir, "--steps", STEPS, "--scheduler", SCHEDULER,
               "--width", 64, "--height", 64, "--rng", "torch", "--precision", "f32", "--negative-prompt", NEGATIVE,
               "--controlnet-dir", tiny_controlnets.folder, "--controlnet", "cn-b", "--control-image", images["b"],
               "--quiet"]
    first = _batch(*command)
    assert first.exit_code == 0, first.output
    common = dict(steps=STEPS, scheduler=SCHEDULER, width=64, height=64)
    cn = ["--controlnet-dir", tiny_controlnets.folder]
    a = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "gen-a.png", *cn, "--controlnet", "cn-a", "--control-image",
                     tmp_path / "ctl.png", "--control-weight", 0.7, seed=1, **common)
    b = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "gen-b.png", *cn, "--controlnet", "cn-b", "--control-image",
                     images["b"], seed=2, **common)
    rows_a, rows_b, rows_c = (read_rgb(out / f"{name}.png").astype(np.int16) for name in "abc")
    print(f"batch controlnet: row a vs generate max {moved(rows_a, a)}, row b max {moved(rows_b, b)}, "
          f"row a vs row c (no unit) {moved(rows_a, rows_c)}")
    assert moved(rows_a, a) == 0 and moved(rows_b, b) == 0
    assert moved(rows_a, rows_c) > 2
    text = read_png_text(out / "a.png")["parameters"]
    assert 'ControlNet 0: "Module: none, Model: cn-a, Weight: 0.7' in text
    assert "ControlNet" not in read_png_text(out / "c.png")["parameters"]

    again = _batch(*command[:-1])
    assert again.exit_code == 0 and "0 done, 0 failed, 3 skipped" in again.output, again.output
    shutil.copy(images["b"], tmp_path / "ctl.png")  # the same path, another picture
    changed = _batch(*command[:-1])
    assert changed.exit_code == 0 and "1 done, 0 failed, 2 skipped" in changed.output, changed.output
    redone = read_rgb(out / "a.png").astype(np.int16)
    print(f"batch controlnet: the changed control image moved row a by {moved(redone, rows_a)}")
    assert moved(redone, rows_a) > 2


def test_batch_bad_controlnet_rows_fail_alone_and_a_bad_command_line_stops_the_batch(tiny_eps, tiny_controlnets,
                                                                                     tmp_path):
    import json

    from tests.test_bad_input import assert_refused

    rows = [{"prompt": "a", "name": "w", "controlnet": "cn-a", "control_image": "missing.png"},
            {"prompt": "a", "name": "x", "control_weight": 0.5},
            {"prompt": "a", "name": "y", "controlnet": "cn-a|cn-b", "control_image": "one.png"},
            {"prompt": "a", "name": "z", "controlnet": "cn-a", "control_image": "one.png", "control_end": 3}]
    (tmp_path / "one.png").write_bytes(tiny_controlnets.images["a"].read_bytes())
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = ["batch", file, "-o", tmp_path / "out", "--model", tiny_eps.ov_dir, "--steps", 1, "--width", 64,
            "--height", 64, "--controlnet-dir", tiny_controlnets.folder]
    result = _batch(*base)
    assert result.exit_code == 1 and "0 done, 4 failed" in result.output, result.output
    for message in ("missing.png", "control_weight is for a ControlNet unit", "one control image per ControlNet",
                    "control_end must be between 0 and 1"):
        assert message in result.output, (message, result.output)
    assert_refused(_batch(*base, "--controlnet", "nope", "--control-image", tiny_controlnets.images["a"]), 2,
                   "--controlnet nope")
    assert_refused(_batch(*base, "--control-weight", 0.5), 2, "--control-weight is for a ControlNet unit")
    assert_refused(_batch(*base, "--controlnet", "cn-a", "--control-image", tmp_path / "nothere.png"), 2,
                   "--control-image")


# --- DeepCache --------------------------------------------------------------------------------------


def test_deepcache_graphs_take_the_residuals_they_run(tiny_eps):
    """The full DeepCache UNet with residual inputs gives the ControlNet UNet's output, and as
    output 1 the feature; the shallow one takes down_block_res_0 only (conv_in's skip, the one it
    runs), and fed the same call's feature and that residual it gives the full UNet's output."""
    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import UNet
    from sdcli.runtime.controlnet import down_name, residual_shapes
    from sdcli.runtime.core import Runtime
    from sdcli.runtime.deepcache import FEATURE

    folder = ModelFolder.open(tiny_eps.ov_dir)
    runtime = Runtime("CPU", "f32", None)
    shapes = UNet.input_shapes(folder, 2, (8, 8), 77)
    plain, full, shallow = (UNet(runtime, folder, shapes, variant) for variant in
                            ("controlnet", "controlnet-deepcache-full", "controlnet-deepcache-shallow"))
    names = residual_shapes(plain.compiled)
    assert residual_shapes(full.compiled) == names
    assert set(residual_shapes(shallow.compiled)) == {down_name(0)}
    rs = np.random.default_rng(1)
    x = rs.standard_normal((2, 4, 8, 8)).astype(np.float32)
    context = rs.standard_normal((2, 77, 32)).astype(np.float32)
    residuals = {name: rs.standard_normal(shape).astype(np.float32) for name, shape in names.items()}
    expected = plain(x, 421.0, context, **residuals)
    np.testing.assert_allclose(full(x, 421.0, context, **residuals), expected, rtol=0, atol=1e-5)
    feature = full.output(1)
    first = {down_name(0): residuals[down_name(0)]}
    np.testing.assert_allclose(shallow(x, 421.0, context, **{FEATURE: feature}, **first), expected, rtol=0, atol=1e-4)
    without = shallow(x, 421.0, context, **{FEATURE: feature}, **{down_name(0): np.zeros_like(first[down_name(0)])})
    assert np.abs(without - expected).max() > 0.1  # the shallow step's residual counts


def test_deepcache_with_a_controlnet(tiny_eps, tiny_controlnets, tmp_path, parity_log):
    """--deepcache 2 with a unit: diffusers' StableDiffusionControlNetPipeline with the tests'
    reference DeepCache on its UNet (tests/test_deepcache.py: the deep modules return their last
    full call's outputs; the ControlNet runs every step and the UNet adds its residuals as ever, so
    a shallow step's fresh one is conv_in's skip's); one step (the full UNet only) is the ControlNet
    picture without DeepCache exactly; at 4 steps the shallow steps move it from the DeepCache-free
    picture, and the unit moves the DeepCache picture."""
    from tests.controlnets import diffusers_controlnet, sdcli_controlnet
    from tests.reference import compare, sdcli_pixels
    from tests.test_deepcache import reference_deepcache

    units = [dict(name="cn-a", image=tiny_controlnets.images["a"])]
    one = [sdcli_pixels(tiny_eps.ov_dir, tmp_path / f"one{flag}.png", "--controlnet-dir", tiny_controlnets.folder,
                        "--controlnet", "cn-a", "--control-image", units[0]["image"], *flags, steps=1,
                        scheduler=SCHEDULER, width=64, height=64)
           for flag, flags in (("", []), ("-dc", ["--deepcache", 2]))]
    cached = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "cached", units, "--deepcache", 2)
    uncached = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "uncached", units)
    no_unit = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "no-unit.png", "--deepcache", 2, steps=STEPS,
                           scheduler=SCHEDULER, width=64, height=64)
    with reference_deepcache(tiny_eps.pipe().unet, 2) as state:  # (the ControlNet pipeline shares this UNet)
        theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, units)
    assert state["calls"] == STEPS
    compare(cached, theirs, parity_log, model="epsilon", scheduler=SCHEDULER, mode="cn deepcache 2", size="64x64")
    print(f"deepcache + controlnet: vs diffusers + reference DeepCache max {moved(cached, theirs)}; "
          f"1 step vs no DeepCache max {moved(*one)}; 4 steps: DeepCache moved "
          f"{moved(cached, uncached)} from without, the unit moved the DeepCache picture {moved(cached, no_unit)}")
    assert moved(*one) == 0
    assert moved(cached, uncached) > 2 and moved(cached, no_unit) > 2


# --- the memory estimate ------------------------------------------------------------------------------


def test_the_memory_estimate_counts_each_unit_and_refuses_a_run_that_would_not_fit(tiny_eps, tiny_controlnets,
                                                                                    tmp_path, monkeypatch):
    """Each unit adds its weights (at least its openvino_model.bin) and activations to the denoising
    stage (guess mode: one row of activations); with the memory between the estimates without and
    with a unit, generate runs without it and refuses the unit in one line, exit 2, nothing written."""
    from sdcli.engine import memory
    from sdcli.engine.controlnet import ControlUnit
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest
    from tests.test_bad_input import assert_refused, invoke

    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=False, controlnet_dir=tiny_controlnets.folder)
    plain = GenerationRequest(prompt="a", steps=2, width=64, height=64)
    a = ControlUnit("cn-a", tiny_controlnets.images["a"])
    b = ControlUnit("cn-b", tiny_controlnets.images["b"])
    estimates = [engine.check_fits(plain.replace(controlnets=units)) for units in ((), (a,), (a, b))]
    denoising = [est.stages["denoising"] for est in estimates]
    bin_size = (tiny_controlnets.folder / "cn-a" / "openvino_model.bin").stat().st_size
    assert denoising[1] - denoising[0] > bin_size + memory.COMPONENT
    assert denoising[2] - denoising[1] > bin_size + memory.COMPONENT
    guess = engine.check_fits(plain.replace(controlnets=(ControlUnit("cn-a", a.image, mode="controlnet"),)))
    assert denoising[0] < guess.stages["denoising"] < denoising[1]  # the prompt's row only
    assert estimates[1].stage == "denoising" and estimates[0].peak < estimates[1].peak
    print(f"memory estimate at 64x64 f32: {estimates[0].peak / 1e6:.1f} MB without a unit, "
          f"{estimates[1].peak / 1e6:.1f} MB with one, {estimates[2].peak / 1e6:.1f} MB with two")

    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
    monkeypatch.setattr(memory, "available_bytes", lambda: (estimates[0].peak + estimates[1].peak) // 2)
    engine.check_fits(plain)  # fits
    out = tmp_path / "out.png"
    base = ["generate", "--model", tiny_eps.ov_dir, "--prompt", "a", "--steps", 2, "--width", 64, "--height", 64,
            "--precision", "f32", "--output", out, "--controlnet-dir", tiny_controlnets.folder]
    assert_refused(invoke(*base, "--controlnet", "cn-a", "--control-image", a.image), 2, "denoising")
    assert not out.exists()
