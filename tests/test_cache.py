"""The bounded compiled-model cache (sdcli/runtime/blob_cache.py): least recently used blobs
removed past $SDCLI_CACHE_MAX_GB / --cache-max-gb, never one another process holds; JSON
sidecars; `sdcli cache list` and `sdcli cache prune`; a full disk while a blob is stored."""
from __future__ import annotations

import errno
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.runtime import blob_cache
from sdcli.runtime.blob_cache import enforce, entries, remove_blob, sidecar_of

DAY = 86400


def fake_blob(cache: Path, name: str, size: int, last_use: float, model: str | None = "/m/a",
              component: str = "unet") -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    blob = cache / f"{name}.blob"
    blob.write_bytes(b"b" * size)
    if model is not None:
        sidecar_of(blob).write_text(json.dumps({"model": model, "component": component,
                                                "shapes": {"sample": [2, 4, 6, 8]}, "precision": "f32"}))
    os.utime(blob, (last_use, 1_000_000))
    return blob


def names(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


# --- the pruning logic on fake blobs ---------------------------------------------------------------

def test_least_recently_used_blobs_go_first_until_the_cache_is_under_the_bound(tmp_path):
    cache = tmp_path / "c"
    now = 2_000_000_000
    a = fake_blob(cache, "unet-a", 300, now - 30)
    b = fake_blob(cache, "unet-b", 300, now - 10)
    c = fake_blob(cache, "vae_decoder-c", 300, now - 20)
    new = fake_blob(cache, "unet-new", 300, now - 40)  # just written, however old its atime
    assert [e.path for e in entries(cache)] == [new, a, c, b]
    removed = enforce(cache, 650, keep=new)
    assert [e.path for e in removed] == [a, c]  # 1200 -> 600 bytes: the two least recently used
    assert names(cache) == ["unet-b.blob", "unet-b.blob.json", "unet-new.blob", "unet-new.blob.json"]
    assert enforce(cache, 650, keep=new) == []  # under the bound: nothing more
    enforce(cache, 0, keep=new)
    assert names(cache) == ["unet-new.blob", "unet-new.blob.json"]  # the new one stays even alone over it


def test_a_use_moves_a_blob_to_the_back_and_keeps_its_write_time(tmp_path):
    cache = tmp_path / "c"
    old = fake_blob(cache, "unet-old", 10, 1000)
    fake_blob(cache, "unet-mid", 10, 2000)
    blob_cache.mark_used(old)
    assert old.stat().st_mtime == 1_000_000  # written then: `cache list` and the blob tests see it unchanged
    assert [e.path.name for e in entries(cache)] == ["unet-mid.blob", "unet-old.blob"]


def test_a_blob_another_process_holds_is_not_removed(tmp_path):
    """The concurrency rule: an importer holds a shared flock on the blob (MappedFile takes it and
    the mapping keeps it); removal needs an exclusive one without waiting."""
    cache = tmp_path / "c"
    held = fake_blob(cache, "unet-held", 100, 1000)
    free = fake_blob(cache, "unet-free", 100, 2000)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_SH); "
         "print('held', flush=True); sys.stdin.read()", str(held)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert [e.path for e in enforce(cache, 0)] == [free]
        assert held.exists() and sidecar_of(held).exists()
        result = CliRunner().invoke(app, ["cache", "prune", "--all"], env={"SDCLI_CACHE_DIR": str(cache)})
        assert result.exit_code == 0, result.output
        assert "removed 0 blobs, 0 bytes freed; kept 1 in use by another process" in result.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert remove_blob(held) and names(cache) == []


def test_a_mapped_blob_is_held_until_it_is_unmapped(tmp_path):
    from sdcli.runtime.core import MappedFile

    blob = fake_blob(tmp_path, "unet-x", 4096, 1000)
    mapped = MappedFile(blob)
    assert not remove_blob(blob) and blob.exists()
    del mapped
    gc.collect()
    assert remove_blob(blob) and not blob.exists() and not sidecar_of(blob).exists()


def test_a_full_disk_while_storing_leaves_no_blob_and_no_sidecar(tmp_path, monkeypatch):
    cache = tmp_path / "c"
    cache.mkdir()
    written = tmp_path / "export.blob"
    written.write_bytes(b"compiled")

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blob_cache, "atomic_write_bytes", no_space)
    assert not blob_cache.store(written, cache / "unet-k.blob", {"model": "/m"}, 10**9)
    assert names(cache) == []


def test_the_bound_defaults_to_20_gb_or_a_quarter_of_the_free_space_and_bad_values_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(blob_cache.MAX_ENV, raising=False)
    free = blob_cache.free_bytes(tmp_path / "not" / "yet")
    assert blob_cache.max_bytes(tmp_path) == min(20 * 10**9, int(free * 0.25))
    monkeypatch.setenv(blob_cache.MAX_ENV, "1.5")
    assert blob_cache.max_bytes(tmp_path) == 1_500_000_000
    for bad in ("-1", "nan", "lots"):
        monkeypatch.setenv(blob_cache.MAX_ENV, bad)
        with pytest.raises(Exception, match="takes a size in GB"):
            blob_cache.max_bytes(tmp_path)


FILLER = """
import fcntl, json, os, sys, tempfile
from pathlib import Path
from sdcli.runtime.blob_cache import store
cache, me, size, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
held, checked = [], 0
for i in range(25):
    folder = Path(tempfile.mkdtemp(prefix=".export-", dir=cache))
    written = folder / "x.blob"
    written.write_bytes(os.urandom(size))
    blob = cache / f"unet-{me}-{i}.blob"
    assert store(written, blob, {"model": me, "i": i}, limit)
    folder.rmdir()
    try:  # as an importer: a shared lock held while 'mapped' (the last three)
        f = open(blob, "rb")
    except FileNotFoundError:  # evicted by another process since: the real importer compiles
        continue
    fcntl.flock(f, fcntl.LOCK_SH)
    try:
        same = os.stat(blob).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        f.close()  # unlinked between open and lock: the real importer reads its open file whole
        continue
    held.append((blob, f, f.read()))
    for blob_held, g, data in held:
        assert blob_held.read_bytes() == data, f"{blob_held} lost or changed while held"
        checked += 1
    if len(held) > 3:
        held.pop(0)[1].close()
print("ok", checked)
"""


def test_three_processes_filling_the_cache_at_once_lose_no_held_blob_and_leave_no_partial_file(tmp_path):
    """Three processes store 25 blobs each into a cache bounded at 6 blobs, each holding its last
    three as an importer would: no held blob disappears, nothing temporary is left, every blob has
    its sidecar, and the cache ends within the bound plus the blobs still held at the end."""
    cache = tmp_path / "c"
    cache.mkdir()
    size = 4096
    procs = [subprocess.Popen([sys.executable, "-c", FILLER, str(cache), f"p{k}", str(size), str(6 * size)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith("ok "), err
        assert int(out.split()[1]) > 20  # held blobs were checked after other processes' pruning
    listing = names(cache)
    assert not [n for n in listing if n.startswith(".") or n.endswith(".part")], listing
    blobs = [n for n in listing if n.endswith(".blob")]
    assert sorted(n for n in listing if n.endswith(".json")) == sorted(b + ".json" for b in blobs)
    assert all((cache / b).stat().st_size == size for b in blobs)
    assert len(blobs) <= 6 + 3 * 3, listing
    enforce(cache, 6 * size)  # the holders are gone: down to the bound
    assert len(list(cache.glob("*.blob"))) == 6


# --- sdcli cache list / prune -------------------------------------------------------------------

def cli(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_cache_list_and_prune_variants(tmp_path, monkeypatch):
    import time

    cache = tmp_path / "c"
    model_a, model_b = tmp_path / "a", tmp_path / "b"
    model_a.mkdir()
    now = time.time()
    fake_blob(cache, "unet-old", 100, now - 10 * DAY, str(model_a))
    fake_blob(cache, "vae_decoder-a", 200, now - 1 * DAY, str(model_a), "vae_decoder")
    fake_blob(cache, "unet-b", 400, now - 2 * DAY, str(model_b))
    fake_blob(cache, "text_encoder-b", 800, now - 60, str(model_b), "text_encoder")
    fake_blob(cache, "unet-nosidecar", 50, now - 3 * DAY, None)
    (cache / "unet-once.blob.seen").write_bytes(b"")
    (cache / "unet-gone.blob.json").write_text("{}")  # an orphan sidecar
    monkeypatch.setenv("SDCLI_CACHE_DIR", str(cache))
    monkeypatch.setenv(blob_cache.MAX_ENV, "0.000001")  # 1000 bytes

    r = cli("cache", "list", "--json")
    assert r.exit_code == 0, r.output
    listing = json.loads(r.output)
    assert listing["max_bytes"] == 1000 and listing["bytes"] == 1550
    assert [(b["blob"], b["model"], b["component"], b["bytes"]) for b in listing["blobs"]] == [
        ("unet-old.blob", str(model_a), "unet", 100), ("unet-nosidecar.blob", None, None, 50),
        ("unet-b.blob", str(model_b), "unet", 400), ("vae_decoder-a.blob", str(model_a), "vae_decoder", 200),
        ("text_encoder-b.blob", str(model_b), "text_encoder", 800)]
    assert listing["blobs"][0]["size_key"] == "sample:2x4x6x8"
    r = cli("cache", "list")
    assert r.exit_code == 0 and "5 blobs" in r.output, r.output
    table = [line.split() for line in r.output.splitlines()[1:]]
    assert table[0] == ["MODEL", "COMPONENT", "SIZE", "KEY", "BYTES", "LAST", "USE"]
    assert [row[:4] for row in table[1:]] == [[str(model_a), "unet", "sample:2x4x6x8", "100"],
                                              ["?", "unet-nosidecar.blob", "?", "50"],
                                              [str(model_b), "unet", "sample:2x4x6x8", "400"],
                                              [str(model_a), "vae_decoder", "sample:2x4x6x8", "200"],
                                              [str(model_b), "text_encoder", "sample:2x4x6x8", "800"]]

    r = cli("cache", "prune", "--older-than", "5")
    assert r.exit_code == 0 and "removed 1 blobs, 100 bytes freed" in r.output and "unet-old.blob" in r.output
    r = cli("cache", "prune", "--model", model_a, "--dry-run")
    assert r.exit_code == 0 and "would remove 1 blobs, 200 bytes freed" in r.output
    assert (cache / "vae_decoder-a.blob").exists()
    r = cli("cache", "prune", "--model", model_a)
    assert r.exit_code == 0 and "removed 1 blobs, 200 bytes freed" in r.output
    assert not (cache / "vae_decoder-a.blob").exists() and not (cache / "vae_decoder-a.blob.json").exists()
    r = cli("cache", "prune")  # to the bound: 1250 bytes -> 800, the least recently used first
    assert r.exit_code == 0 and "removed 2 blobs, 450 bytes freed" in r.output, r.output
    assert names(cache) == ["text_encoder-b.blob", "text_encoder-b.blob.json", "unet-once.blob.seen"]
    r = cli("cache", "prune", "--all")
    assert r.exit_code == 0 and "removed 1 blobs, 800 bytes freed" in r.output
    assert names(cache) == []


@pytest.mark.parametrize("args", [
    ["cache", "prune", "--all", "--model", "x"],
    ["cache", "prune", "--model", "/no/such/model"],
    ["cache", "prune", "--older-than", "-1"],
    ["cache", "prune", "--cache-max-gb", "-2"],
    ["generate", "--prompt", "x", "--cache-max-gb", "-0.5"],
])
def test_user_mistakes_are_one_line_and_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.setenv("SDCLI_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv(blob_cache.MAX_ENV, "")
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("sdcli: error: ")
    assert not (tmp_path / "c").exists()


def test_a_bad_cache_max_gb_variable_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCLI_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv(blob_cache.MAX_ENV, "-1")
    r = cli("generate", "--prompt", "x")
    assert r.exit_code == 2 and r.output.strip() == (
        "sdcli: error: $SDCLI_CACHE_MAX_GB takes a size in GB, 0 or more (0: no cache), got '-1'")


# --- on a real model ---------------------------------------------------------------------------

def generate(tiny_eps, out: Path, *extra) -> np.ndarray:
    from sdcli.imaging.image_io import read_rgb

    r = cli("generate", "--model", tiny_eps.ov_dir, "--prompt", "a red fox", "--steps", "2", "--seed", "5",
            "--width", "64", "--height", "48", "--scheduler", "euler", "--precision", "f32", "--output", out,
            "--quiet", *extra)
    assert r.exit_code == 0, r.output
    gc.collect()  # the engine's mappings (and their locks) go with it
    return read_rgb(out).astype(np.int16)


def test_a_tiny_bound_keeps_one_blob_and_the_same_picture(tiny_eps, tmp_path, monkeypatch):
    """--cache-max-gb 0.000001: each new blob evicts the older ones; run 1 compiles (marks), run
    2 exports text encoder, UNet, VAE decoder in turn (each evicting the one before), run 3
    imports the VAE decoder's and compiles the rest.  Every picture is the uncached one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDCLI_CACHE_DIR", str(cache))
    monkeypatch.setenv(blob_cache.MAX_ENV, "")  # restored after the test: --cache-max-gb sets it
    plain = generate(tiny_eps, tmp_path / "plain.png", "--cache-max-gb", "0")
    assert not cache.exists()  # 0: no cache at all, not even the marks
    other_seed = generate(tiny_eps, tmp_path / "s.png", "--cache-max-gb", "0", "--seed", "6")
    assert np.abs(other_seed - plain).max() > 2  # the comparisons below can fail
    for run in range(3):
        picture = generate(tiny_eps, tmp_path / f"{run}.png", "--cache-max-gb", "0.000001")
        assert np.array_equal(picture, plain), f"run {run}"
        blobs = sorted(cache.glob("*.blob"))
        assert len(blobs) == (0 if run == 0 else 1), names(cache)
        assert sorted(cache.glob("*.blob.json")) == [sidecar_of(b) for b in blobs]  # no orphan, none missing
        assert not [n for n in names(cache) if n.startswith(".")]
    assert blobs[0].name.startswith("vae_decoder-")
    listing = json.loads(cli("cache", "list", "--json").output)
    [row] = listing["blobs"]
    assert row["model"] == str(Path(tiny_eps.ov_dir).resolve()) and row["component"] == "vae_decoder"
    assert row["bytes"] == blobs[0].stat().st_size and row["precision"] == "f32" and row["device"] == "CPU"
    # the tiny VAE scales by 2: 64x48 pixels are 32x24 latents
    assert row["shapes"] == {"latent_sample": [1, 4, 24, 32]} and row["size_key"] == "latent_sample:1x4x24x32"


def test_a_full_disk_while_a_blob_is_stored_leaves_the_run_working_and_the_cache_consistent(tiny_eps, tmp_path,
                                                                                               monkeypatch):
    """Two faults: the sidecar's write fails with ENOSPC (the blob renamed in is taken out again),
    and OpenVINO fails compiling with CACHE_DIR (the model is compiled without it)."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = tmp_path / "cache"
    request = GenerationRequest(prompt="a red fox", steps=1, seed=3, width=64, height=48, scheduler="euler")

    def image():
        engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=cache)
        return engine.generate(request).image

    first = image()  # marks
    monkeypatch.setattr(blob_cache, "atomic_write_bytes", no_space)
    assert np.array_equal(image(), first)
    assert not list(cache.glob("*.blob")) and not list(cache.glob("*.json"))
    assert not [n for n in names(cache) if n.startswith(".")]
    assert len(list(cache.glob("*.seen"))) == 3  # tried again next time

    monkeypatch.undo()

    class NoSpaceCore:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def compile_model(self, model, device, config):
            if "CACHE_DIR" in config:
                raise RuntimeError("Exception from src/inference: No space left on device")
            return self._inner.compile_model(model, device, config)

    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=cache)
    engine.runtime.core = NoSpaceCore(engine.runtime.core)
    assert np.array_equal(engine.generate(request).image, first)
    assert not list(cache.glob("*.blob")) and not [n for n in names(cache) if n.startswith(".")]
    assert np.array_equal(image(), first)  # and with room again, the blobs are stored
    assert len(list(cache.glob("*.blob"))) == 3 and len(list(cache.glob("*.blob.json"))) == 3
