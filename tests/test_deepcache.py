"""DeepCache: the graph cut is exact, N=1 is the plain path, and N>1 gives the pixels of
a reference DeepCache written here on diffusers' UNet."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import read_rgb
from tests.reference import compare, reference_arguments, reference_pipeline, sdcli_generate, to_pixels

STEPS = 9


@contextlib.contextmanager
def reference_deepcache(unet, interval: int):
    """DeepCache on a diffusers UNet, by hand: on calls that are not a multiple of
    `interval`, every module deeper than the last up block's last layer returns what it
    returned on the last full call; conv_in, the time embedding, that last layer and the
    output head always run."""
    last = unet.up_blocks[-1]
    deep = [*unet.down_blocks, unet.mid_block, *unet.up_blocks[:-1], *last.resnets[:-1]]
    deep += list(last.attentions[:-1]) if getattr(last, "attentions", None) else []
    state = {"calls": 0}
    cache: dict[int, object] = {}

    def cached(module):
        original = module.forward

        def forward(*args, **kwargs):
            if state["calls"] % interval == 0:
                cache[id(module)] = original(*args, **kwargs)
            return cache[id(module)]

        return original, forward

    unet_forward = unet.forward

    def counting_forward(*args, **kwargs):
        try:
            return unet_forward(*args, **kwargs)
        finally:
            state["calls"] += 1

    originals = []
    for module in deep:
        original, module.forward = cached(module)
        originals.append((module, original))
    unet.forward = counting_forward
    try:
        yield state
    finally:
        for module, original in originals:
            module.forward = original
        del unet.forward  # back to the class's method


def _picture(init_image, strength) -> dict:
    return dict(width=64, height=64) if init_image is None else dict(init_image=init_image, strength=strength)


def diffusers_pixels(model, scheduler, interval, init_image=None, strength=None):
    pipe = reference_pipeline(model.pipe().components, scheduler, img2img=init_image is not None)
    with reference_deepcache(pipe.unet, interval) as state:
        images = pipe(**reference_arguments(steps=STEPS, **_picture(init_image, strength))).images
    assert state["calls"] > interval  # the cache was really used
    return to_pixels(images)


def sdcli_pixels(model, scheduler, tmp_path, deepcache, init_image=None, strength=None, name="out.png"):
    """The PNG `sdcli generate` writes, with --deepcache unless `deepcache` is None."""
    extra = [] if deepcache is None else ["--deepcache", deepcache]
    return sdcli_generate(model.ov_dir, tmp_path / name, *extra, steps=STEPS, scheduler=scheduler,
                          **_picture(init_image, strength))


def _unet_parts(model, batch=2, hw=(8, 8), seq=77):
    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import UNet
    from sdcli.runtime.core import Runtime

    runtime = Runtime("CPU", "f32", None)
    folder = ModelFolder.open(model.ov_dir)
    return [UNet(runtime, folder, UNet.input_shapes(folder, batch, hw, seq), variant) for variant in (None, "full", "shallow")]


def test_shallow_branch_with_fresh_feature_is_the_whole_unet(tiny_eps):
    """Feeding the shallow graph the feature of the same call must give the full output:
    the cut removes nothing the output needs."""
    plain, full, shallow = _unet_parts(tiny_eps)
    rs = np.random.default_rng(0)
    x = rs.standard_normal((2, 4, 8, 8)).astype(np.float32)
    context = rs.standard_normal((2, 77, 32)).astype(np.float32)
    expected = plain(x, 421.5, context)
    got = full(x, 421.5, context)
    feature = full.output(1)
    assert feature.shape[0] == 2 and feature.shape[2:] == (8, 8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(shallow(x, 421.5, context, deepcache_feature=feature), expected, rtol=0, atol=1e-5)
    # a stale feature changes the result: the shallow graph really uses it
    stale = shallow(x, 421.5, context, deepcache_feature=feature * 0.5)
    assert np.abs(stale - expected).max() > 1e-3
    # the shallow graph is a small part of the UNet
    ops = lambda unet: len(unet.compiled.get_runtime_model().get_ops())  # noqa: E731
    assert ops(shallow) < ops(plain) / 2


def test_deepcache_1_is_the_plain_path(tiny_eps, tmp_path):
    plain = sdcli_pixels(tiny_eps, "euler", tmp_path, None, name="plain.png")
    one = sdcli_pixels(tiny_eps, "euler", tmp_path, 1, name="one.png")
    assert plain.read_bytes() == one.read_bytes()


@pytest.mark.parametrize("scheduler,interval", [("euler", 3), ("ddim", 2), ("dpmpp_2m", 3), ("heun", 3)])
def test_txt2img_matches_reference_deepcache(tiny_eps, scheduler, interval, tmp_path, parity_log):
    theirs = diffusers_pixels(tiny_eps, scheduler, interval)
    ours = read_rgb(sdcli_pixels(tiny_eps, scheduler, tmp_path, interval)).astype(np.int16)
    plain = read_rgb(sdcli_pixels(tiny_eps, scheduler, tmp_path, None, name="plain.png")).astype(np.int16)
    assert np.abs(ours - plain).max() > 2  # the cache changes the image, so the match below means something
    compare(ours, theirs, parity_log, model="epsilon", scheduler=scheduler, mode=f"deepcache {interval}", size="64x64")


def test_img2img_matches_reference_deepcache(tiny_vpred, init_image_file, tmp_path, parity_log):
    theirs = diffusers_pixels(tiny_vpred, "euler_a", 2, init_image_file, 0.7)
    ours = read_rgb(sdcli_pixels(tiny_vpred, "euler_a", tmp_path, 2, init_image_file, 0.7)).astype(np.int16)
    compare(ours, theirs, parity_log, model="v_prediction", scheduler="euler_a", mode="dc 2 img2img .7", size="96x64")


def test_deepcache_is_stored_and_redone_from_the_image(tiny_eps, tmp_path):
    first = sdcli_pixels(tiny_eps, "euler", tmp_path, 3, name="first.png")
    again = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--from-image", str(first),
                                      "--output", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == first.read_bytes()


def test_a_graph_without_the_skip_layout_is_refused():
    import openvino as ov
    from openvino import opset13 as ops

    from sdcli.runtime.deepcache import add_feature_output
    from sdcli.util.errors import UsageError

    sample = ops.parameter([1, 4, 8, 8], ov.Type.f32, name="sample")
    sample.output(0).get_tensor().set_names({"sample"})
    model = ov.Model([ops.result(ops.relu(sample))], [sample])
    with pytest.raises(UsageError, match="deepcache"):
        add_feature_output(model, {})


def test_deepcache_on_an_optimum_cli_folder_matches_the_reference(tiny_eps, tmp_path, parity_log):
    """The folder optimum-cli wrote (tests/data/optimum-tiny, tiny_eps's weights): its UNet
    graph is cut the same way and gives the reference DeepCache's pixels."""
    from pathlib import Path

    class Optimum:
        ov_dir = Path(__file__).parent / "data" / "optimum-tiny"

    theirs = diffusers_pixels(tiny_eps, "ddim", 3)
    ours = read_rgb(sdcli_pixels(Optimum, "ddim", tmp_path, 3)).astype(np.int16)
    compare(ours, theirs, parity_log, model="optimum-cli", scheduler="ddim", mode="deepcache 3", size="64x64")
