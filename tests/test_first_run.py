"""The first run's loading (issue 26): the text encoder compiles beside the UNet, not after it
(one thread for everything with --low-memory); and `sdcli bench` measures what GNU time
measures for the same processes."""
from __future__ import annotations

import sys
import threading

import pytest

from sdcli.bench.peers import gnu_time, machine_info, markdown, run_measured, summarize, Run
from sdcli.engine.loader import ComponentCache


def _loads(lanes: bool) -> tuple[bool, set[str]]:
    """Whether the text encoder was built while the UNet's build was still running, and the
    loader threads that built them."""
    cache = ComponentCache(runtime=None, folder=None, lanes=lanes)
    unet_running, release = threading.Event(), threading.Event()
    threads: set[str] = set()

    def unet():
        threads.add(threading.current_thread().name)
        unet_running.set()
        release.wait(10)
        return "unet"

    def text_encoder():
        threads.add(threading.current_thread().name)
        return "text_encoder"

    unet_future = cache.start(("unet", ()), unet)
    assert unet_running.wait(10)
    text_future = cache.start(("text_encoder", 1), text_encoder)
    beside = text_future.result(timeout=2) == "text_encoder" if lanes else not text_future.done()
    release.set()
    assert unet_future.result(timeout=10) == "unet" and text_future.result(timeout=10) == "text_encoder"
    return beside, threads


def test_text_encoder_compiles_beside_the_unet():
    beside, threads = _loads(lanes=True)
    assert beside and len(threads) == 2


def test_low_memory_loads_one_component_at_a_time():
    waits_for_unet, threads = _loads(lanes=False)
    assert waits_for_unet and len(threads) == 1


def test_vae_decoder_and_transformer_go_on_the_denoisers_lane():
    cache = ComponentCache(runtime=None, folder=None)
    names = {}
    for key in ("unet", "transformer", "vae_decoder", "vae_decoder_tiny", "text_encoder", "text_encoder_2",
                "vae_encoder"):
        names[key] = cache.start((key,), lambda: threading.current_thread().name).result(timeout=10)
    denoiser = {names[k] for k in ("unet", "transformer", "vae_decoder", "vae_decoder_tiny")}
    encoders = {names[k] for k in ("text_encoder", "text_encoder_2", "vae_encoder")}
    assert len(denoiser) == 1 and len(encoders) == 1 and denoiser != encoders


@pytest.mark.parametrize("lanes", [True, False])
def test_controlnet_loads_beside_the_encoders_and_the_unet(lanes):
    """A ControlNet does not wait behind the text encoders or the UNet (its own lane); with
    --low-memory it waits, as everything does."""
    cache = ComponentCache(runtime=None, folder=None, lanes=lanes)
    release = threading.Event()
    busy = [cache.start((name,), lambda name=name: release.wait(10) and name) for name in ("unet", "text_encoder_2")]
    control = cache.start(("controlnet", "cn", ()), lambda: threading.current_thread().name)
    try:
        name = control.result(timeout=2) if lanes else None
        assert (name is not None and name.startswith("sdcli-load-control")) if lanes else not control.done()
    finally:
        release.set()
    assert [f.result(timeout=10) for f in busy] == ["unet", "text_encoder_2"]
    assert control.result(timeout=10)


def _decoders(engine) -> list[tuple]:
    return [key for key in engine.components._components if key[0].startswith("vae_decoder")]


@pytest.mark.parametrize("kind,vae,size", [("sd", "full", (64, 48)), ("sd", "tiny", (64, 64)),
                                           ("z-image", "full", (64, 48))])
def test_the_vae_decoder_loads_during_the_loop_with_the_decode_s_shape(tiny_eps, tiny_z_image, tmp_path, kind,
                                                                       vae, size):
    """preload() starts the decoder the decode will ask for (its name and latent size), so that
    the decode finds it loaded and no second one is compiled; --low-memory starts none."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    folder = tiny_eps.ov_dir if kind == "sd" else tiny_z_image[1]
    if vae == "tiny":  # a copy of the tiny SD model with a tiny VAE added
        import shutil

        from typer.testing import CliRunner

        from sdcli.cli.app import app
        from sdcli.convert.random_model import build_random_taesd

        folder = shutil.copytree(tiny_eps.ov_dir, tmp_path / "with-taesd")
        build_random_taesd(tmp_path / "taesd", seed=3)
        result = CliRunner().invoke(app, ["convert", "--tiny-vae", str(tmp_path / "taesd"), "--into", str(folder),
                                          "--quiet"])
        assert result.exit_code == 0, result.output
    width, height = size
    request = GenerationRequest(prompt="a red house", steps=2, seed=1, width=width, height=height, vae=vae)
    engine = Engine(folder, cache_dir=False)
    engine.preload(request)
    started = _decoders(engine)
    f = engine.folder.vae_scale_factor
    assert started == [(engine.folder.vae(vae).decoder, (height // f, width // f))]
    result = engine.generate(request)
    assert result.image.shape == (height, width, 3)
    assert _decoders(engine) == started  # the decode used the preloaded decoder
    low = Engine(folder, cache_dir=False, low_memory=True)
    low.preload(request)
    assert _decoders(low) == []


@pytest.mark.skipif(gnu_time() is None, reason="GNU time is not installed")
def test_bench_measures_what_gnu_time_measures():
    grow = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.3)"
    check: dict = {}
    wall, rss, rc, _, _ = run_measured([sys.executable, "-c", grow], check=check)
    assert rc == 0
    assert abs(check["wall_s"] - wall) < 0.1
    assert 200 < check["rss_mb"] < 400 and rss == check["rss_mb"]  # the child's peak, in MiB
    held = bytearray(600 * 2**20)  # this process grows past the child: wait4's figure would be ours, GNU time's not
    held[::4096] = b"x" * len(held[::4096])
    check = {}
    _, rss, _, _, _ = run_measured([sys.executable, "-c", grow], check=check)
    _, plain_rss, _, _, _ = run_measured([sys.executable, "-c", grow])
    assert 200 < rss < 400 and rss == check["rss_mb"] and plain_rss > 600
    del held
    runs = [Run("sdcli", "warm", 1, 0, 0, wall, rss, 0, {"gnu_time": check}),
            Run("genai", "warm", 1, 0, 1, wall * 2, rss * 2, 0, {"gnu_time": check})]
    rows = summarize(runs)
    # (the ratio is of the rounded medians: 0.441 / 0.881 is 0.501)
    assert rows[0]["gnu_time_wall_s"] == check["wall_s"] and abs(rows[0]["wall_vs_genai"] - 0.5) < 0.002
    table = markdown(rows, machine_info(), 512, "auto")
    assert "gnu_time_wall_s" in table and "default precision" in table
