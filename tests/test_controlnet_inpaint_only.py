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


# --- inpaint_only with the unit's own mask, no inpainting: the extension keeps the unmasked area ---------

def restore_hook(init_file, mask_file, weight):
    """The extension's "post-processing for restore" (scripts/hook.py) in torch: x0 from the UNet's
    output, outside the mask (max_pool2d 10x10, stride 8, padding 1) the control image's latents,
    back to noise, blended by the weight.  (The tiny VAE's factor is 2, not 8: the window keeps
    the extension's shape, the factor plus 2, at a stride of the factor.)"""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    image = torch.from_numpy(np.asarray(Image.open(init_file).convert("RGB"), np.float32) / 255.0)
    mask = torch.from_numpy(np.asarray(Image.open(mask_file).convert("L"), np.float32) / 255.0)[None, None]

    def hook(pipe, sample, timestep, noise):
        f = pipe.vae_scale_factor
        pooled = F.max_pool2d(mask, (f + 2, f + 2), stride=(f, f), padding=1).double()
        with torch.no_grad():
            origin = pipe.vae.encode(image.permute(2, 0, 1)[None] * 2 - 1).latent_dist.mean
        origin = (origin * pipe.vae.config.scaling_factor).double()
        a = pipe.scheduler.alphas_cumprod[torch.round(torch.as_tensor(timestep, dtype=torch.float64)).long()].double()
        recip, recipm1 = torch.sqrt(1.0 / a), torch.sqrt(1.0 / a - 1)
        x_t = sample[:, :4].double()
        x0 = recip * x_t - recipm1 * noise.double()
        x0 = x0 * pooled + origin * (1 - pooled)
        eps = (recip * x_t - x0) / recipm1
        w = max(0.0, min(1.0, weight))
        return (eps * w + noise.double() * (1 - w)).float()
    return hook


def extension_overlay(picture, init_file, mask_file, sigma=7):
    """inpaint_only_post_processing: the picture over the control image through the mask dilated
    (sigma x sigma) and box-blurred (sigma x sigma)."""
    import cv2
    from PIL import Image

    r = np.asarray(Image.open(init_file).convert("RGB"), np.float32) / 255.0
    m = np.asarray(Image.open(mask_file).convert("L"), np.float32) / 255.0
    m = cv2.blur(cv2.dilate(m, np.ones((sigma, sigma), np.uint8)), (sigma, sigma))[:, :, None]
    y = np.clip(m * (picture.astype(np.float32) / 255.0) + (1 - m) * r, 0, 1)
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8), m[:, :, 0]


def test_inpaint_only_with_its_own_mask_keeps_the_unmasked_area_as_the_extension(
        tiny_eps, tiny_controlnets, inpaint_files, second_mask, tmp_path, parity_log):
    """txt2img with an inpaint_only unit and its own mask (--control-mask; the API's unit mask):
    against diffusers' ControlNet pipeline given make_inpaint_condition's image, with the
    extension's restore hooked onto its UNet output and its final overlay: within 2 of 255.
    Outside the dilated mask the picture is the control image; the keeping moves the picture
    (inpaint, which keeps nothing, against it), and so does another mask."""
    from tests.controlnets import diffusers_controlnet, sdcli_controlnet
    from tests.reference import compare

    init, mask = inpaint_files[(64, 64)]
    unit = [dict(name="cn-a", image=init, scale=0.8)]

    def mine(name, module, mask_file):
        return sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, name, unit, "--control-preprocessor", module,
                                "--control-mask", mask_file)

    ours = mine("kept", "inpaint_only", mask)
    theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, [dict(unit[0], cond=make_inpaint_condition(init, mask))],
                                  unet_hook=restore_hook(init, mask, 0.8))
    theirs, m = extension_overlay(theirs, init, mask)
    compare(ours, theirs, parity_log, model="epsilon", scheduler=SCHEDULER, mode="cn inpaint_only (unit mask)",
            size="64x64")
    from sdcli.imaging.image_io import read_rgb

    outside = m == 0
    assert outside.mean() > 0.3 and np.array_equal(ours[outside], read_rgb(init)[outside])
    harmonious = mine("harmonious", "inpaint", mask)  # (the same ControlNet input; nothing kept)
    other = mine("other", "inpaint_only", second_mask)
    print(f"inpaint_only with its own mask: max {moved(ours, theirs)} from diffusers + the extension's hook; "
          f"against inpaint (nothing kept) {moved(ours, harmonious)}, another mask {moved(ours, other)}")
    assert moved(ours, harmonious) > 2 and moved(ours, other) > 2


def test_control_mask_mistakes(tiny_eps, tiny_controlnets, inpaint_files, tmp_path):
    """--control-mask on a unit whose preprocessor takes none, an unreadable mask, a count that fits
    neither once nor once per unit: one line, exit 2, nothing written."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from tests.reference import generate_args

    init, mask = inpaint_files[(64, 64)]
    out = tmp_path / "no.png"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for extra, message in ((["--control-preprocessor", "canny", "--control-mask", mask], "is for the inpaint"),
                           (["--control-preprocessor", "inpaint_only", "--control-mask", tmp_path / "broken.png"],
                            "--control-mask: cannot read the mask"),
                           (["--control-preprocessor", "inpaint_only", "--control-mask", mask, "--control-mask", mask],
                            "--control-mask given 2 times for 1")):
        args = generate_args(tiny_eps.ov_dir, out, "--controlnet-dir", tiny_controlnets.folder, "--controlnet",
                             "cn-a", "--control-image", init, *extra, steps=STEPS, width=64, height=64)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()


def test_the_latent_mask_is_the_extension_s_max_pool():
    """latent_mask at SD's factor 8 is torch's max_pool2d(mask, (10, 10), stride (8, 8), padding 1),
    grey levels and edges included."""
    import torch
    import torch.nn.functional as F

    from sdcli.engine.inpaint_only import latent_mask

    mask = np.random.default_rng(3).random((48, 72)).astype(np.float32) ** 4
    want = F.max_pool2d(torch.from_numpy(mask)[None, None], (10, 10), stride=(8, 8), padding=1).numpy()
    assert latent_mask(mask, 8).shape == want.shape == (1, 1, 6, 9)
    np.testing.assert_array_equal(latent_mask(mask, 8), want)


def test_batch_rows_take_a_unit_mask_and_a_changed_mask_redoes_the_row(tiny_eps, tiny_controlnets, inpaint_files,
                                                                      second_mask, tmp_path):
    """A row's control_mask (relative to the file's folder) makes generate's --control-mask picture; the
    mask is in the row's key by its content: another mask in the same file makes the row again."""
    import json
    import shutil

    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.imaging.image_io import read_rgb
    from tests.controlnets import STEPS as UNIT_STEPS
    from tests.controlnets import sdcli_controlnet
    from tests.reference import NEGATIVE, PROMPT, SEED

    init, mask = inpaint_files[(64, 64)]
    shutil.copy(mask, tmp_path / "m.png")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": PROMPT, "seed": SEED, "name": "r", "controlnet": "cn-a",
                                "control_image": str(init), "control_preprocessor": "inpaint_only",
                                "control_mask": "m.png"}) + "\n")
    out = tmp_path / "out"
    command = ["batch", str(rows), "-o", str(out), "--model", str(tiny_eps.ov_dir), "--steps", str(UNIT_STEPS),
               "--scheduler", SCHEDULER, "--width", "64", "--height", "64", "--rng", "torch", "--precision", "f32",
               "--negative-prompt",
               NEGATIVE, "--controlnet-dir", str(tiny_controlnets.folder), "--quiet"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    single = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "single", [dict(name="cn-a", image=init)],
                              "--control-preprocessor", "inpaint_only", "--control-mask", mask)
    first = read_rgb(out / "r.png")
    print(f"batch control_mask: row vs generate max {moved(first, single)}")
    assert moved(first, single) == 0
    shutil.copy(second_mask, tmp_path / "m.png")
    redone = CliRunner().invoke(app, command[:-1])
    assert redone.exit_code == 0 and "1 done, 0 failed, 0 skipped" in redone.output, redone.output
    assert moved(read_rgb(out / "r.png"), first) > 2
