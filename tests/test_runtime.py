"""The compiled-model blob cache: reused across engines, rebuilt when stale or corrupt."""
from __future__ import annotations

import os

import numpy as np

from sdcli.engine.engine import Engine
from sdcli.engine.request import GenerationRequest
from sdcli.runtime.core import blob_payload


def _image(model_dir, cache_dir):
    engine = Engine(model_dir, precision="f32", cache_dir=cache_dir)
    config = GenerationRequest(prompt="a red fox", steps=3, seed=3, width=64, height=64, scheduler="euler")
    return engine.generate(config).image


def test_blob_cache_is_written_on_the_second_run_reused_and_survives_corruption(tiny_eps, tmp_path):
    """The first run of a model and size compiles and marks it seen (no blob for a size maybe
    never used again); the second compiles with OpenVINO writing the blobs; later runs import
    them."""
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


def _engine_image(engine):
    config = GenerationRequest(prompt="a red fox", steps=3, seed=3, width=64, height=64, scheduler="euler")
    return engine.generate(config).image


def test_a_blob_removed_by_another_process_before_it_is_opened_is_compiled_instead(tiny_eps, tmp_path, monkeypatch):
    """Processes sharing a cache: a blob seen by is_file() may be gone when opened (another one
    dropped it as stale, or pruned it): the component is compiled, not a FileNotFoundError."""
    import sdcli.runtime.core as core

    cache = tmp_path / "cache"
    first = _image(tiny_eps.ov_dir, cache)
    _image(tiny_eps.ov_dir, cache)
    assert len(list(cache.glob("*.blob"))) == 3
    real = core.MappedFile

    def removed_first(path):
        if str(path).endswith(".blob"):
            path.unlink()
        return real(path)

    monkeypatch.setattr(core, "MappedFile", removed_first)
    assert np.array_equal(_image(tiny_eps.ov_dir, cache), first)
    assert list(cache.glob("*.blob")) == []


class _FailingImport:
    """An ov.Core whose import_model fails, and when it imports the compiled model of `size`
    bytes, only once another process has renamed a new blob over it."""

    def __init__(self, core, size, replace):
        self._core, self._size, self._replace = core, size, replace

    def __getattr__(self, name):
        return getattr(self._core, name)

    def import_model(self, blob, *args, **kwargs):
        if blob.get_size() == self._size:
            self._replace()
        raise RuntimeError("bad blob")


def test_a_failed_import_does_not_remove_a_newer_blob_another_process_wrote(tiny_eps, tmp_path):
    cache = tmp_path / "cache"
    first = _image(tiny_eps.ov_dir, cache)
    _image(tiny_eps.ov_dir, cache)
    unet_blob = next(cache.glob("unet-*.blob"))
    good = unet_blob.read_bytes()

    def another_process_writes_it():
        new = unet_blob.with_name(".new.part")
        new.write_bytes(good)
        os.replace(new, unet_blob)

    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=cache)
    assert [len(b.read_bytes()) for b in cache.glob("*.blob")].count(len(good)) == 1
    payload = len(good) - blob_payload(good[:4096])  # (what import_model is given: the blob less its header)
    engine.runtime.core = _FailingImport(engine.runtime.core, payload, another_process_writes_it)
    assert np.array_equal(_engine_image(engine), first)  # every component compiled afresh
    assert unet_blob.read_bytes() == good  # the newer blob stays; the one that failed was another file
    assert list(cache.glob("text_encoder-*.blob")) == []  # a blob that failed and was not replaced is dropped


def test_blobs_are_what_openvino_cache_dir_writes_and_their_header_is_skipped(tiny_eps, tmp_path):
    """A blob is OpenVINO's CACHE_DIR file, streamed by OpenVINO as it compiles: its header
    (not import_model's to read) is found and skipped; a blob without one is read whole."""
    cache = tmp_path / "cache"
    _image(tiny_eps.ov_dir, cache)
    _image(tiny_eps.ov_dir, cache)
    assert list(cache.glob(".export-*")) == []  # OpenVINO's own folder is gone once its file is renamed
    for blob in cache.glob("*.blob"):
        head = blob.read_bytes()[:4096]
        start = blob_payload(head)
        assert head.startswith(b"<?xml") and b"<compiled_blob" in head[:start] and start > 0
    assert blob_payload(b"\x00binary export without a header") == 0
    assert blob_payload(b"<?xml but never closed") == 0


def test_an_export_folder_left_by_a_killed_process_is_removed_a_day_later(tiny_eps, tmp_path):
    cache = tmp_path / "cache"
    _image(tiny_eps.ov_dir, cache)
    old, recent = cache / ".export-old", cache / ".export-recent"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "1234.blob").write_bytes(b"half")
    os.utime(old, (0, 0))
    _image(tiny_eps.ov_dir, cache)  # the second run exports
    assert not old.exists() and recent.is_dir()


def _mapped_rss_kb(path) -> int:
    """The resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_an_llm_encoder_s_first_inference_leaves_no_weight_pages_resident(tiny_z_image):
    """Compiled for any length, the LLM encoder copies its weights at its first inference, reading
    them through the weight file's mapping: those pages are dropped as it goes, else they stay
    resident beside the copy (Z-Image's Qwen3 int8: 3.4 GB on top of 3.5 GB). The same first
    inference without the dropping leaves most of the file resident: what the test measures moves."""
    from sdcli.model.folder import ModelFolder
    from sdcli.runtime.components import LLMTextEncoder
    from sdcli.runtime.core import Runtime

    folder = ModelFolder.open(tiny_z_image[1])
    bin_path = folder.ir("text_encoder").with_suffix(".bin").resolve()
    size_kb = bin_path.stat().st_size // 1024
    runtime = Runtime("CPU", "f32", None)
    ids = list(range(10, 30))

    plain = LLMTextEncoder(runtime, folder)
    plain.request.infer({"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)})
    without = _mapped_rss_kb(bin_path)
    del plain
    encoder = LLMTextEncoder(runtime, folder)
    first = encoder(ids)
    with_dropping = _mapped_rss_kb(bin_path)
    assert np.array_equal(encoder(ids), first)
    assert without > 0.5 * size_kb, (without, size_kb)
    assert with_dropping < 0.1 * size_kb, (with_dropping, size_kb)
