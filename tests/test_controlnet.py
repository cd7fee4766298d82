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
