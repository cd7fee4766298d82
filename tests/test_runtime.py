"""The compiled-model blob cache: reused across engines, rebuilt when stale or corrupt."""
from __future__ import annotations

import numpy as np

from sdcli.engine.engine import Engine
from sdcli.engine.request import GenerationRequest


def _image(model_dir, cache_dir):
    engine = Engine(model_dir, precision="f32", cache_dir=cache_dir)
    config = GenerationRequest(prompt="a red fox", steps=3, seed=3, width=64, height=64, scheduler="euler")
    image = engine.generate(config).image
    engine.finish()
    return image


def test_blob_cache_is_written_on_the_second_run_reused_and_survives_corruption(tiny_eps, tmp_path):
    """The first run of a model and size compiles and marks it seen (a blob export would
    double the memory for a size maybe never used again); the second writes the blobs once
    the image is made; later runs import them."""
    cache = tmp_path / "cache"
    first = _image(tiny_eps.ov_dir, cache)
    assert list(cache.glob("*.blob")) == []
    assert sorted(m.name.split("-")[0] for m in cache.glob("*.blob.seen")) == ["text_encoder", "unet", "vae_decoder"]

    second = _image(tiny_eps.ov_dir, cache)
    assert np.array_equal(first, second)
    blobs = sorted(cache.glob("*.blob"))
    assert [b.name.split("-")[0] for b in blobs] == ["text_encoder", "unet", "vae_decoder"]
    assert list(cache.glob("*.seen")) == []
    stamps = {b: b.stat().st_mtime_ns for b in blobs}

    third = _image(tiny_eps.ov_dir, cache)
    assert np.array_equal(first, third)
    assert {b: b.stat().st_mtime_ns for b in blobs} == stamps  # imported, not rewritten

    unet_blob = next(b for b in blobs if b.name.startswith("unet"))
    unet_blob.write_bytes(b"garbage")
    fourth = _image(tiny_eps.ov_dir, cache)
    assert np.array_equal(first, fourth)
    assert not unet_blob.exists()  # the bad blob was dropped (and the model compiled afresh) ...
    fifth = _image(tiny_eps.ov_dir, cache)
    assert np.array_equal(first, fifth)
    assert unet_blob.stat().st_size > 1000  # ... and stored again on the next run


def test_no_cache_dir_writes_nothing(tiny_eps, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=None)
    engine.generate(GenerationRequest(prompt="x", steps=1, seed=1, width=64, height=64))
    assert list(tmp_path.iterdir()) == []
