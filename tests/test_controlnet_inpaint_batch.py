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
