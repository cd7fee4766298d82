"""Shared by the ControlNet tests: the tiny ControlNets (conftest's tiny_controlnets fixture),
diffusers' ControlNet pipelines and sdcli generate with the same units, and how far two
pictures are apart."""
from __future__ import annotations

import numpy as np

STEPS, SCHEDULER, SIZE = 4, "euler", 64


class TinyControlNets:
    def __init__(self, sources, folder, images):
        self.sources = sources  # diffusers ControlNetModel folders, by name
        self.folder = folder  # the --controlnet-dir they are converted into
        self.images = images  # control image files: "a", "b" (64x64), "wide" (96x64)
        self._models = {}

    def model(self, name):
        if name not in self._models:
            import torch
            from diffusers import ControlNetModel

            self._models[name] = ControlNetModel.from_pretrained(self.sources[name], torch_dtype=torch.float32)
        return self._models[name]


def diffusers_controlnet(model, controlnets, units: list[dict], *, img2img=None, guess_mode=False, unet_hook=None,
                         **arguments):
    """diffusers' StableDiffusionControlNet(Img2Img)Pipeline on tiny_eps with `units` (each
    name, image, and optionally scale, start, end, and cond: a control tensor in place of the
    image; several: MultiControlNetModel);
    `unet_hook(pipe, sample, timestep, noise)`: what becomes of the UNet's output at each call."""
    import diffusers
    from PIL import Image

    from tests.reference import diffusers_scheduler, reference_arguments, to_pixels

    nets = [controlnets.model(unit["name"]) for unit in units]
    cls = diffusers.StableDiffusionControlNetImg2ImgPipeline if img2img else diffusers.StableDiffusionControlNetPipeline
    components = {k: v for k, v in model.pipe().components.items()}
    pipe = cls(**components, controlnet=nets if len(nets) > 1 else nets[0])
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers_scheduler(SCHEDULER, pipe.scheduler.config)
    images = [unit["cond"] if "cond" in unit else Image.open(unit["image"]).convert("RGB") for unit in units]
    one = len(units) == 1
    pick = lambda key, default: [u.get(key, default) for u in units] if not one else units[0].get(key, default)  # noqa: E731
    extra = dict(controlnet_conditioning_scale=pick("scale", 1.0), control_guidance_start=pick("start", 0.0),
                 control_guidance_end=pick("end", 1.0), guess_mode=guess_mode)
    if img2img:
        args = reference_arguments(steps=STEPS, init_image=img2img["init"], strength=img2img["strength"], **arguments)
        args["control_image"] = images if not one else images[0]
    else:
        args = reference_arguments(steps=STEPS, width=SIZE, height=SIZE, **arguments)
        args["image"] = images if not one else images[0]
    if unet_hook is None:
        return to_pixels(pipe(**args, **extra).images)
    forward = pipe.unet.forward

    def hooked(sample, timestep, *rest, **kwargs):
        out = forward(sample, timestep, *rest, **kwargs)
        if isinstance(out, tuple):  # (return_dict=False, as the pipelines call it)
            return (unet_hook(pipe, sample, timestep, out[0]), *out[1:])
        return type(out)(sample=unet_hook(pipe, sample, timestep, out.sample))

    pipe.unet.forward = hooked
    try:
        return to_pixels(pipe(**args, **extra).images)
    finally:
        del pipe.unet.forward  # (the UNet is the tiny model's, shared by the other tests)


def ldm_controlnet(model, source_dir, seed: int, **overrides):
    """A tiny random ControlNet for `model` (tiny_eps) shaped as an SD 1.x single file is read (8
    heads, 32 groups): its diffusers folder, the ControlNetModel, and its state dict in the
    original (LDM) names that A1111's files hold (without the control_model. prefix)."""
    import torch
    from diffusers import ControlNetModel

    from sdcli.convert.controlnet_file import ldm_name
    from sdcli.convert.random_controlnet import build_random_controlnet

    source = build_random_controlnet(model.diffusers_dir / "unet", source_dir, seed=seed, attention_head_dim=8,
                                     norm_num_groups=32, **overrides)
    net = ControlNetModel.from_pretrained(source, torch_dtype=torch.float32).eval()
    state = net.state_dict()
    return source, net, {ldm_name(name, state): tensor.contiguous() for name, tensor in state.items()}


def sdcli_controlnet(model, controlnets, tmp_path, name, units: list[dict], *flags, img2img=None):
    from tests.reference import sdcli_pixels

    extra = ["--controlnet-dir", controlnets.folder]
    for unit in units:
        extra += ["--controlnet", unit["name"], "--control-image", unit["image"]]
    for key, flag in (("scale", "--control-weight"), ("start", "--control-start"), ("end", "--control-end")):
        if any(key in unit for unit in units):
            for unit in units:
                extra += [flag, unit.get(key, {"scale": 1.0, "start": 0.0, "end": 1.0}[key])]
    picture = dict(init_image=img2img["init"], strength=img2img["strength"]) if img2img else dict(width=SIZE, height=SIZE)
    return sdcli_pixels(model.ov_dir, tmp_path / f"{name}.png", *extra, *flags, steps=STEPS, scheduler=SCHEDULER,
                        **picture)


def moved(a, b) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
