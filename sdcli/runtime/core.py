"""OpenVINO loading with one copy of the weights in memory, and a compiled-model cache.

Peak memory is the product's main constraint on small machines.  Two things keep it low:

* Files are mapped, not read: IR weights and cached blobs are mapped privately, and
  while OpenVINO copies them into its own buffers a thread keeps dropping the mapped
  pages.  They are clean file pages, so dropping is always safe (a page touched again is
  read back from the page cache) and the process never holds the file and OpenVINO's
  copy at once.
* Compiled models are cached as exported blobs keyed by the IR files' identity (path,
  size, mtime), the static shapes, device and precision — never by hashing the weights,
  which OpenVINO's CACHE_DIR does for in-memory models and which touches every page.

When a blob is written.  A first run of a model and size only compiles (and leaves a `.seen`
mark in the cache): a size used once costs no blob, and exporting costs time.  The second
compiles with OpenVINO's CACHE_DIR pointed at a private folder, so that OpenVINO streams the
compiled model into a file as it serialises it, and renames that file into the cache; every
later run imports it.  Exporting through the Python API instead (CompiledModel.export_model)
builds the whole blob in memory first: a second copy of the model at the run's peak.
A blob is the file CACHE_DIR writes: OpenVINO's header (see `blob_payload`), then what
export_model gives.

The cache is bounded ($SDCLI_CACHE_MAX_GB, see blob_cache.py): each new blob gets a JSON sidecar
saying what it is, and least recently used blobs that no process holds are removed to make room.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

from sdcli.runtime import blob_cache
from sdcli.runtime.compressed import conv_weight_folds, fold_conv_weights, replace_chain
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_write_bytes

PRECISIONS = ("auto", "f32", "bf16", "f16")
CACHE_FORMAT = 2  # bump when what goes into a blob changes (graph edits before compiling)
# A blob smaller than this keeps its mapped pages through its import: the first inference reads
# them again where they were dropped. On the 16-core Xeon the SD VAE decoder's first decode
# (a 95 MB blob) took 1.04x openvino-genai's with the pages dropped and 1.00-1.01x with them kept
# (bench-results/xeon16/session30/vae-decode: variants sdcli and sdcli-nodrop), for 95 MB more
# RSS; the UNet's and text encoders' blobs (hundreds of MB to GB) are still dropped.
KEEP_PAGES_BELOW = 160 * 2**20
ABANDONED_EXPORT_S = 86400.0
LORA_BLOBS_KEPT = 4  # blobs of a component with LoRAs fused in ("unet-lora<tag>"), the most recently used


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def precision_name(value) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT value (an ov.Type or a string) as "f32", "bf16", "f16"."""
    name = value.to_string() if hasattr(value, "to_string") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


def effective_precision(core, device: str, precision: str) -> str:
    """The precision OpenVINO computes in: `precision`, or for "auto" the device's default
    (f32 where the device does not say)."""
    if precision != "auto":
        return precision
    try:
        return precision_name(core.get_property(device, "INFERENCE_PRECISION_HINT"))
    except RuntimeError:
        return "f32"


def openvino_reason(exc: BaseException, limit: int = 300) -> str:
    """The line of an OpenVINO error that says what is wrong: its last one (the lines before
    it name C++ source files and checks)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:limit] if lines else type(exc).__name__


def is_ir_xml(data: bytes) -> bool:
    """Whether `data` is well-formed XML whose root is an IR's <net>.

    OpenVINO hands anything its IR reader rejects to its other frontends, whose C++
    logging spills parse errors onto stderr; checking first keeps errors to our one line.
    """
    import xml.parsers.expat

    root: list[str] = []
    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = lambda name, attrs: root.append(name) if not root else None
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError:
        return False
    return root == ["net"]


def default_cache_dir() -> Path:
    if os.environ.get("SDCLI_CACHE_DIR"):
        return Path(os.environ["SDCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdcli" / "openvino"


class MappedFile:
    """A file mapped copy-on-write (never written) and exposed as an ov.Tensor of bytes.

    The open file holds a shared flock as long as it is mapped (the mapping keeps its own
    descriptor of it): the cache's pruning never removes a blob in use (blob_cache.py)."""

    def __init__(self, path: Path):
        import numpy as np
        import openvino as ov

        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            self.identity = (st.st_dev, st.st_ino)  # the file mapped, even if `path` is replaced since
            blob_cache.lock_shared(f.fileno())
            self._map = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else None
        self.data = np.frombuffer(self._map, dtype=np.uint8) if self._map is not None else np.zeros(0, np.uint8)
        self.tensor = ov.Tensor(self.data, shared_memory=True)
        self.attached: list[MappedFile] = []  # mappings the same model uses (spilled weights): kept and dropped with it

    def tensor_from(self, offset: int):
        """The bytes from `offset` on, as an ov.Tensor sharing the mapping."""
        import openvino as ov

        return self.tensor if offset == 0 else ov.Tensor(self.data[offset:], shared_memory=True)

    def drop_pages(self) -> None:
        if self._map is not None and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED)
        for other in self.attached:
            other.drop_pages()

    @contextlib.contextmanager
    def dropping_pages(self, period: float = 0.2):
        """Drop the mapped pages every `period` seconds while the block runs."""
        stop = threading.Event()

        def loop():
            while not stop.wait(period):
                self.drop_pages()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.drop_pages()


def _unlink_if_same(path: Path, mapped: MappedFile | None) -> None:
    """Remove the blob at `path` if it is still the file `mapped` read: another process (a
    server, a generate run sharing the cache) may have renamed a new blob there since."""
    with contextlib.suppress(OSError):
        st = path.stat()
        if mapped is not None and (st.st_dev, st.st_ino) == mapped.identity:
            path.unlink()


BLOB_HEADER_START = b"<?xml"
BLOB_HEADER_END = b"/>\n"
BLOB_HEADER_MAX = 4096


def blob_payload(head: bytes) -> int:
    """Where the compiled model starts in a blob that begins with `head`: after the header
    OpenVINO's CACHE_DIR writes (one XML element, `<compiled_blob .../>` and a newline), which
    import_model does not read.  A blob without one starts at 0."""
    if not head.startswith(BLOB_HEADER_START):
        return 0
    end = head.find(BLOB_HEADER_END, 0, BLOB_HEADER_MAX)
    return 0 if end < 0 else end + len(BLOB_HEADER_END)


def _remove_abandoned_exports(cache: Path) -> None:
    """Remove the export folders of processes killed while compiling (a day old: a live one
    renames its file within minutes)."""
    import time

    for folder in cache.glob(".export-*"):
        with contextlib.suppress(OSError):
            if time.time() - folder.stat().st_mtime > ABANDONED_EXPORT_S:
                shutil.rmtree(folder, ignore_errors=True)


def _model_folder(xml: Path) -> Path:
    """The converted model folder an IR belongs to: the nearest folder above it with a
    model_index.json, else the IR's own folder."""
    xml = xml.resolve()
    for folder in xml.parents:
        if (folder / "model_index.json").is_file():
            return folder
    return xml.parent


def _file_id(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class Runtime:
    """The OpenVINO core, device, precision and blob cache shared by all components."""

    def __init__(self, device: str = "CPU", precision: str = "auto", cache_dir: Path | None = None,
                 streams: int | None = None, cache_max_bytes: int | None = None):
        """`streams`: None compiles for latency (one request at a time, all cores on it);
        0 for throughput with OpenVINO's choice of streams; N for throughput with N streams
        (several requests run at once, each on its share of the cores).  `cache_max_bytes`:
        the blob cache's bound [default: $SDCLI_CACHE_MAX_GB, else blob_cache's default, taken
        now]; 0: no cache."""
        import openvino as ov

        check_precision(precision)
        self.core = ov.Core()
        self.device = device
        self.precision = precision
        if cache_dir is not None and cache_max_bytes is None:
            cache_max_bytes = blob_cache.max_bytes(cache_dir)
        self.cache_max_bytes = cache_max_bytes
        self.cache_dir = cache_dir if cache_max_bytes != 0 else None  # 0: compile every time
        self.streams = streams
        available = {d.split(".")[0] for d in self.core.available_devices}
        if device.split(":")[0].split(".")[0] not in available and not device.startswith(("AUTO", "HETERO", "MULTI")):
            raise UsageError(f"OpenVINO device {device!r} is not available here (have: {', '.join(self.core.available_devices)})")

    @property
    def config(self) -> dict:
        return self.config_for(self.precision)

    def config_for(self, precision: str) -> dict:
        config = {"PERFORMANCE_HINT": "LATENCY" if self.streams is None else "THROUGHPUT"}
        if self.streams:
            config["NUM_STREAMS"] = str(self.streams)
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        return config

    def computes_in_f16(self) -> bool:
        """Whether compiled models compute in float16 (asked for, or the device's default)."""
        return effective_precision(self.core, self.device, self.precision) == "f16"

    def read(self, xml: Path, component: str):
        """Read an IR whose weights stay mapped from the file (see MappedFile)."""
        bin_path = xml.with_suffix(".bin")
        try:
            data = xml.read_bytes()
            if not is_ir_xml(data):
                raise ValueError("not an IR")
            weights = MappedFile(bin_path)
            model = self.core.read_model(data, weights.tensor)
        except (RuntimeError, OSError, ValueError) as exc:
            why = f": {openvino_reason(exc)}" if isinstance(exc, RuntimeError) else ""
            raise UsageError(f"{component}: {xml} is not a readable OpenVINO IR{why} (truncated, corrupt, "
                             "or made by a newer OpenVINO?)") from None
        return model, weights

    def _blob_path(self, component: str, xml: Path, shapes: dict, config: dict) -> Path | None:
        if self.cache_dir is None:
            return None
        import openvino as ov

        try:
            device_name = self.core.get_property(self.device, "FULL_DEVICE_NAME")
        except RuntimeError:
            device_name = self.device
        key = json.dumps([CACHE_FORMAT, ov.__version__, self.device, device_name, config, _file_id(xml),
                          _file_id(xml.with_suffix(".bin")), {k: list(v) for k, v in shapes.items()}], sort_keys=True)
        return self.cache_dir / f"{component}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.blob"

    def load(self, component: str, xml: Path, shapes: dict, prepare: Callable | None = None,
             precision: str | None = None):
        """A compiled model of `xml` reshaped to `shapes` (input name -> shape), from the
        blob cache when it has one; `prepare(model)` edits the graph before compiling;
        `precision` overrides the runtime's for this component.

        Returns (compiled model, mapping): keep the mapping as long as the compiled model,
        which may use weights straight from it."""
        config = self.config_for(precision or self.precision)
        blob = self._blob_path(component, xml, shapes, config)
        if blob is not None and blob.is_file():
            mapped = None
            try:
                mapped = MappedFile(blob)
                blob_cache.mark_used(blob)  # the cache removes the least recently used first
                keep = mapped.data.size < KEEP_PAGES_BELOW  # (a VAE's: its pages stay for the first inference)
                with contextlib.nullcontext() if keep else mapped.dropping_pages():
                    payload = mapped.tensor_from(blob_payload(bytes(mapped.data[:BLOB_HEADER_MAX])))
                    return self.core.import_model(payload, self.device, config), mapped
            except OSError:
                pass  # removed by another process since is_file() (a stale blob, LoRA pruning): compile
            except RuntimeError:  # stale or from another build of OpenVINO: compile afresh
                _unlink_if_same(blob, mapped)
        model, weights = self.read(xml, component)
        with weights.dropping_pages():
            if prepare is not None:
                prepare(model)
            self._fold_conv_weights(model, weights)  # int8 convolution weights: no float32 copy kept
            try:
                model.reshape(shapes)
            except RuntimeError as exc:
                raise UsageError(f"{component}: cannot take shapes {shapes}: {openvino_reason(exc)}") from None
            export = blob is not None and self._second_compile(blob)
            meta = {"model": str(_model_folder(xml)), "component": component, "xml": str(xml.resolve()),
                    "shapes": {k: list(v) for k, v in shapes.items()}, "device": self.device,
                    "precision": precision or self.precision}
            try:
                compiled = self._compile(model, config, blob if export else None, meta)
            except RuntimeError as exc:
                raise UsageError(f"{component}: OpenVINO cannot compile it for {self.device}: {openvino_reason(exc)}") from None
            del model
        return compiled, weights

    def _fold_conv_weights(self, model, weights: MappedFile) -> None:
        """runtime/compressed.py's fold of int8 convolution weights to float16, the float16 values
        spilled to a file in the cache's folder and mapped (attached to `weights`, whose pages are
        dropped while OpenVINO copies them), so that they are not held in memory either; without
        a cache folder, or where the disk refuses the file, they stay in memory."""
        if self.cache_dir is None:
            fold_conv_weights(model)
            return
        import itertools

        import numpy as np

        folds = conv_weight_folds(model)
        first = next(folds, None)
        if first is None:
            return  # nothing to fold (not an int8 model): no file
        placed = []
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=".export-spill-", dir=self.cache_dir))  # (abandoned: removed)
        except OSError:
            fold_conv_weights(model)
            return
        try:
            path = folder / "weights.f16"
            try:
                with open(path, "wb") as f:
                    for convert, value in itertools.chain([first], folds):
                        f.write(b"\0" * (-f.tell() % 64))
                        placed.append((convert, f.tell(), value.shape))
                        f.write(value.tobytes())
            except OSError:  # a full disk: in memory
                fold_conv_weights(model)
                return
            mapped = MappedFile(path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the mapping keeps the file until it goes
        for convert, offset, shape in placed:
            size = int(np.prod(shape)) * 2
            replace_chain(convert, mapped.data[offset:offset + size].view(np.float16).reshape(shape), shared=True)
        weights.attached.append(mapped)

    @staticmethod
    def _second_compile(blob: Path) -> bool:
        """Whether `blob`'s model and size was compiled before (and is worth a blob); if not,
        mark it as compiled once."""
        seen = blob.with_name(blob.name + ".seen")
        if seen.is_file():
            return True
        try:
            seen.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(seen, b"")
        except OSError:
            pass  # no cache is slower, not wrong
        return False

    def _compile(self, model, config: dict, blob: Path | None, meta: dict | None = None):
        """Compile `model`; with `blob`, OpenVINO also writes it there (see the module's doc)
        with `meta` in its sidecar, and the cache is brought back under its bound."""
        if blob is None:
            return self.core.compile_model(model, self.device, config)
        _remove_abandoned_exports(blob.parent)
        try:
            folder = Path(tempfile.mkdtemp(prefix=".export-", dir=blob.parent))
        except OSError:
            return self.core.compile_model(model, self.device, config)
        try:
            try:
                compiled = self.core.compile_model(model, self.device, {**config, "CACHE_DIR": str(folder)})
            except RuntimeError:  # a full disk can fail the cache's write: compile without it
                return self.core.compile_model(model, self.device, config)
            written = list(folder.glob("*.blob"))
            if len(written) == 1:
                with contextlib.suppress(OSError):  # a full disk: no blob this time, the run goes on
                    if written[0].stat().st_size and blob_cache.store(written[0], blob, meta or {},
                                                                      self.cache_max_bytes):
                        blob.with_name(blob.name + ".seen").unlink(missing_ok=True)
                        if "-lora" in blob.name:
                            self._prune_lora_blobs(blob)
            return compiled
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _prune_lora_blobs(blob: Path) -> None:
        """Keep LORA_BLOBS_KEPT blobs of `blob`'s component with LoRAs (each is a whole copy of
        its weights, and every set of LoRAs used twice makes one)."""
        base = blob.name.split("-lora", 1)[0]
        blobs = sorted(blob.parent.glob(f"{base}-lora*.blob"), key=lambda p: p.stat().st_atime, reverse=True)
        for old in blobs[LORA_BLOBS_KEPT:]:
            blob_cache.remove_blob(old)
