"""The ControlNet inpaint preprocessors in generate (issue 22): --control-preprocessor inpaint_only
(and inpaint, the extension's inpaint_global_harmonious) with --mask, against diffusers 0.42's
StableDiffusionControlNetInpaintPipeline given make_inpaint_condition's control image (the
control image in [0, 1], the masked pixels -1: what control_v11p_sd15_inpaint is run with, and
the extension's inpaint protocol); the mask changes the picture; no mask is refused.

Cheap: the session's tiny model and ControlNets (every layer randomised), 64x64, 3 steps."""
from __future__ import annotations

import numpy as np
import pytest

from tests.controlnets import SCHEDULER, moved

STEPS = 3
STRENGTH = 0.75


def make_inpaint_condition(image_file, mask_file):
    """diffusers' recipe for control_v11p_sd15_inpaint (its docs' make_inpaint_condition)."""
    import torch
    from PIL import Image

    image = np.array(Image.open(image_file).convert("RGB")).astype(np.float32) / 255.0
    mask = np.array(Image.open(mask_file).convert("L")).astype(np.float32) / 255.0
    image[mask > 0.5] = -1.0
    return torch.from_numpy(np.expand_dims(image, 0).transpose(0, 3, 1, 2))


def ours(model, controlnets, out, init, mask, preprocessor="inpaint_only", *flags):
    from tests.reference import sdcli_pixels

    return sdcli_pixels(model.ov_dir, out, "--controlnet-dir", controlnets.folder, "--controlnet", "cn-a",
                        "--control-image", init, "--control-preprocessor", preprocessor, *flags, steps=STEPS,
                        scheduler=SCHEDULER, init_image=init, mask=mask, mask_blur=0, strength=STRENGTH)


@pytest.fixture(scope="session")
def second_mask(inpaint_files, tmp_path_factory):
    """Another 64x64 mask: a rectangle on the right half."""
    import cv2

    mask = np.zeros((64, 64), np.uint8)
    mask[10:50, 34:60] = 255
    path = tmp_path_factory.mktemp("inpaint-only") / "mask2.png"
    cv2.imwrite(str(path), mask)
    return path


def test_inpaint_only_matches_diffusers_and_the_mask_moves_the_picture(tiny_eps, tiny_controlnets, inpaint_files,
                                                                        second_mask, tmp_path, parity_log):
    import diffusers

    from tests.reference import compare, diffusers_scheduler, reference_arguments, to_pixels

    init, mask = inpaint_files[(64, 64)]
    mine = ours(tiny_eps, tiny_controlnets, tmp_path / "ours.png", init, mask)
    pipe = diffusers.StableDiffusionControlNetInpaintPipeline(**tiny_eps.pipe().components,
                                                              controlnet=tiny_controlnets.model("cn-a"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers_scheduler(SCHEDULER, pipe.scheduler.config)
    args = reference_arguments(steps=STEPS, init_image=init, strength=STRENGTH, mask=mask)
    # (controlnet_conditioning_scale: this pipeline's default is 0.5, generate's weight 1)
    theirs = to_pixels(pipe(**args, control_image=make_inpaint_condition(init, mask),
                            controlnet_conditioning_scale=1.0).images)
    compare(mine, theirs, parity_log, model="eps", scheduler=SCHEDULER, mode="cn inpaint_only (--mask)", size="64x64")
    # the ControlNet sees the mask: the same inpainting with the plain control image differs ...
    plain = ours(tiny_eps, tiny_controlnets, tmp_path / "plain.png", init, mask, "none")
    # ... and so does another mask
    other = ours(tiny_eps, tiny_controlnets, tmp_path / "other.png", init, second_mask)
    # inpaint (inpaint_global_harmonious) is the same in generate (the extension falls back to it
    # from inpaint_only when A1111 inpaints)
    harmonious = ours(tiny_eps, tiny_controlnets, tmp_path / "harmonious.png", init, mask,
                      "inpaint_global_harmonious")
    print(f"inpaint_only: max {np.abs(mine - theirs).max()} from diffusers; vs the unmasked control image moved "
          f"{moved(mine, plain)}, another mask moved {moved(mine, other)}")
    assert moved(mine, plain) > 2 and moved(mine, other) > 2
    assert np.array_equal(mine, harmonious)


def test_inpaint_only_without_a_mask_is_refused(tiny_eps, tiny_controlnets, init_image_file, tmp_path):
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from tests.reference import generate_args

    out = tmp_path / "none.png"
    for extra in ({}, {"init_image": init_image_file, "strength": 0.5}):
        args = generate_args(tiny_eps.ov_dir, out, "--controlnet-dir", tiny_controlnets.folder, "--controlnet",
                             "cn-a", "--control-image", tiny_controlnets.images["a"], "--control-preprocessor",
                             "inpaint_only", steps=STEPS, **({"width": 64, "height": 64} if not extra else extra))
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "needs a mask" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()


def test_api_inpaint_unit_mask(tiny_controlnets, monkeypatch):
    """A unit's own mask ({"image", "mask"}, [image, mask] or `mask`) reaches the engine's unit; an
    inpaint unit without one, and no img2img mask, is a field error (422)."""
    import base64

    from sdcli.engine.controlnet import CONTROLNET_ENV
    from sdcli.imaging.image_io import encode_png
    from sdcli.serve.a1111 import FieldError
    from sdcli.serve.controlnet_api import parse_units

    monkeypatch.setenv(CONTROLNET_ENV, str(tiny_controlnets.folder))
    picture = base64.b64encode(encode_png(np.full((16, 16, 3), 90, np.uint8))).decode()
    white = np.zeros((16, 16, 3), np.uint8)
    white[4:12, 4:12] = 255
    mask = base64.b64encode(encode_png(white)).decode()
    unit = {"enabled": True, "module": "inpaint_only", "model": "cn-a"}
    for given in ({"image": {"image": picture, "mask": mask}}, {"image": [picture, mask]},
                  {"image": picture, "mask_image": mask}):
        found = parse_units({"ControlNet": {"args": [{**unit, **given}]}}, "txt2img")[0].unit
        assert found.mask is not None and found.mask[8, 8] == 1.0 and found.mask[0, 0] == 0.0
    with pytest.raises(FieldError, match="needs a mask"):
        parse_units({"controlnet": {"args": [{**unit, "image": picture}]}}, "txt2img")
    with pytest.raises(FieldError, match="needs a mask"):
        parse_units({"controlnet": {"args": [{**unit, "module": "inpaint_global_harmonious"}]}}, "img2img")
    assert parse_units({"controlnet": {"args": [unit]}}, "img2img", has_mask=True)[0].unit.mask is None
