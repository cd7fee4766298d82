"""tile_colorfix and tile_colorfix+sharp: the extension's colour fix of the UNet's output
(engine/colorfix.py), against its formula written again here in torch, and generate against
diffusers' ControlNet pipeline with that formula hooked onto its UNet's output."""
from __future__ import annotations

import numpy as np
import pytest

from tests.controlnets import diffusers_controlnet, moved, sdcli_controlnet
from tests.reference import compare


def torch_colorfix(eps, x_t, t, alphas_cumprod, latents, k, weight, sharpness=None):
    """The extension's post-processing (scripts/hook.py), in torch: predict_start_from_noise,
    blur (replicate pad, avg_pool2d), +sharp on the unconditional rows (diffusers' order:
    first), predict_noise_from_start, the weight's blend."""
    import torch
    import torch.nn.functional as F

    def blur(x):
        return F.avg_pool2d(F.pad(x, (k, k, k, k), mode="replicate"), (2 * k + 1, 2 * k + 1), stride=(1, 1))

    a = alphas_cumprod[torch.round(torch.as_tensor(t, dtype=torch.float64)).long()].double()
    recip, recipm1 = torch.sqrt(1.0 / a), torch.sqrt(1.0 / a - 1)
    eps, x_t, latents = eps.double(), x_t.double(), latents.double()
    x0 = recip * x_t - recipm1 * eps
    x0 = x0 - blur(x0) + blur(latents)
    if sharpness is not None:
        cond = torch.ones(len(x0), 1, 1, 1, dtype=torch.float64)
        cond[: len(x0) // 2] = 0
        neg = sharpness * 0.01 * blur(x0) + (1 - sharpness * 0.01) * x0
        x0 = cond * x0 + (1 - cond) * neg
    fixed = (recip * x_t - x0) / recipm1
    w = max(0.0, min(1.0, weight))
    return fixed * w + eps * (1 - w)


@pytest.mark.parametrize("k, weight, sharpness", [(8, 1.0, None), (3, 0.6, None), (5, 1.0, 70.0), (2, 1.7, 100.0)])
def test_the_fix_is_the_extension_formula(k, weight, sharpness):
    import torch

    from sdcli.engine.colorfix import ColorFix, box_blur

    rs = np.random.default_rng(k)
    eps, x_t = (rs.standard_normal((2, 4, 12, 20)).astype(np.float32) for _ in range(2))
    latents = rs.standard_normal((1, 4, 12, 20)).astype(np.float32)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1 - betas).astype(np.float32)
    for t in (999.0, 480.6, 3.2):
        ours = ColorFix(latents, k, weight, sharpness)(eps, x_t, t, alphas)
        want = torch_colorfix(*map(torch.from_numpy, (eps, x_t)), t, torch.from_numpy(alphas),
                              torch.from_numpy(latents), k, weight, sharpness).numpy()
        np.testing.assert_allclose(ours, want, rtol=0, atol=2e-5 * max(1.0, float(np.abs(want).max())))
        assert np.abs(ours - eps).max() > 0.1  # (it changes the output)
    import torch.nn.functional as F

    x = torch.from_numpy(eps)
    pooled = F.avg_pool2d(F.pad(x, (k, k, k, k), mode="replicate"), 2 * k + 1, stride=1).numpy()
    np.testing.assert_allclose(box_blur(eps, k), pooled, rtol=0, atol=1e-6)


def colorfix_hook(k, weight, sharpness=None):
    def hook(pipe, sample, timestep, noise):
        import torch

        image = torch.from_numpy(np.asarray(hook.image, np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            latents = pipe.vae.encode(image).latent_dist.mean * pipe.vae.config.scaling_factor
        return torch_colorfix(noise, sample[:, :4], timestep, pipe.scheduler.alphas_cumprod, latents, k, weight,
                              sharpness).float()
    return hook


def test_generate_tile_colorfix_against_diffusers_with_the_fix_hooked(tiny_eps, tiny_controlnets, tmp_path,
                                                                      parity_log):
    """tile_colorfix (Variation 8 and 3) and tile_colorfix+sharp (Sharpness 2, its most) through generate
    against diffusers' ControlNet pipeline whose UNet output gets the extension's fix: within 2
    of 255; the fix moves the picture (against the same map with `none`), and so do Variation
    and Sharpness."""
    from sdcli.imaging.image_io import read_png_text, read_rgb

    image = tiny_controlnets.images["a"]
    unit = [dict(name="cn-a", image=image, scale=0.8)]
    results = {}
    for name, flags, k, sharpness in (("fix8", ["tile_colorfix"], 8, None),
                                      ("fix3", ["tile_colorfix", "--control-threshold-a", 3], 3, None),
                                      ("sharp", ["tile_colorfix+sharp", "--control-threshold-b", 2], 8, 2.0)):
        ours = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, name, unit, "--control-preprocessor", *flags)
        hook = colorfix_hook(k, 0.8, sharpness)
        hook.image = read_rgb(image)
        theirs = diffusers_controlnet(tiny_eps, tiny_controlnets, unit, unet_hook=hook)
        print(f"{name}: sdcli vs diffusers with the fix hooked max {moved(ours, theirs)}")
        compare(ours, theirs, parity_log, model="epsilon", scheduler="euler", mode=f"cn {name}", size="64x64")
        results[name] = ours
    plain = sdcli_controlnet(tiny_eps, tiny_controlnets, tmp_path, "plain", unit)  # the same map, no fix
    print(f"the fix moves the picture by {moved(results['fix8'], plain)}; Variation 3 against 8 "
          f"{moved(results['fix3'], results['fix8'])}; +sharp against none {moved(results['sharp'], results['fix8'])}")
    assert moved(results["fix8"], plain) > 2
    assert moved(results["fix3"], results["fix8"]) > 2 and moved(results["sharp"], results["fix8"]) > 2
    text = read_png_text(tmp_path / "sharp.png")["parameters"]
    assert "Module: tile_colorfix+sharp" in text and "Threshold A: 8.0, Threshold B: 2.0" in text
