"""The compiled-model cache's bound: its size limit, what each blob is (a JSON sidecar), when it
was last used, and removing the least recently used blobs that no process is using.

Files.  `NAME.blob` is a compiled model (see core.py); `NAME.blob.json` beside it says which model
folder, component, shapes and precision it is.  The blob is renamed into place first and its
sidecar written next; a sidecar that cannot be written (a full disk) takes its blob away again, so
a sidecar never outlives its blob for longer than one removal (blob first, then sidecar).

Last use.  A blob's access time, set explicitly (os.utime) whenever it is imported; its
modification time stays the time it was written.  utime sets atime whatever the mount's
noatime/relatime say.

In use.  A process holds a shared flock on every blob it has mapped (MappedFile takes it on the
open file; the mapping keeps that open file, and so the lock, until it is unmapped), and on a blob
it is renaming into place.  A blob is removed only under an exclusive, non-blocking flock: one
another process is importing or holds mapped is skipped.  What this relies on: flock locks
belong to the open file description (Linux, BSD, macOS; on NFS Linux emulates them with byte-range
locks, which also conflict across clients); and a process that opened a blob just before it was
unlinked still reads it whole (an unlinked file lives until its last descriptor or mapping goes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import time
from pathlib import Path

from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_write_bytes

GB = 10**9
DEFAULT_MAX_BYTES = 20 * GB
DEFAULT_FREE_SHARE = 0.25  # of the free space of the cache's filesystem when the process starts
MAX_ENV = "SDCLI_CACHE_MAX_GB"
SIDECAR = ".json"


def parse_max_gb(text: str, where: str = "$" + MAX_ENV) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{where} takes a size in GB, 0 or more (0: no cache), got {text!r}")
    return value


def free_bytes(folder: Path) -> int:
    """Free space (for an unprivileged user) of the filesystem `folder` is, or would be, on."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def default_max_bytes(cache_dir: Path) -> int:
    return min(DEFAULT_MAX_BYTES, int(free_bytes(cache_dir) * DEFAULT_FREE_SHARE))


def max_bytes(cache_dir: Path) -> int:
    """The bound: $SDCLI_CACHE_MAX_GB (which --cache-max-gb sets), else the default."""
    text = os.environ.get(MAX_ENV, "").strip()
    if text:
        return int(parse_max_gb(text) * GB)
    return default_max_bytes(cache_dir)


def sidecar_of(blob: Path) -> Path:
    return blob.with_name(blob.name + SIDECAR)


def mark_used(blob: Path) -> None:
    """Record a use of `blob` (its atime; mtime keeps the time it was written)."""
    with contextlib.suppress(OSError):
        os.utime(blob, ns=(time.time_ns(), blob.stat().st_mtime_ns))


def lock_shared(fd: int) -> None:
    """Mark the open file `fd` as in use (see the module's doc); a filesystem without locks
    leaves it unmarked."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_SH)


def write_sidecar(blob: Path, meta: dict) -> None:
    atomic_write_bytes(sidecar_of(blob), json.dumps(meta, sort_keys=True).encode())


@dataclasses.dataclass
class Entry:
    path: Path
    bytes: int
    last_use: float  # seconds since the epoch
    meta: dict | None  # the sidecar, None when it is missing or unreadable

    @property
    def model(self) -> str | None:
        return (self.meta or {}).get("model")

    def as_json(self) -> dict:
        meta = self.meta or {}
        return {"blob": self.path.name, "model": meta.get("model"), "component": meta.get("component"),
                "size_key": size_key(meta.get("shapes")), "shapes": meta.get("shapes"),
                "precision": meta.get("precision"), "device": meta.get("device"), "bytes": self.bytes,
                "last_use": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_use))}


def size_key(shapes) -> str | None:
    """Shapes as one short text: each input's dimensions joined by x, inputs by commas."""
    if not isinstance(shapes, dict):
        return None
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in sorted(shapes.items()))


def entries(cache: Path) -> list[Entry]:
    """The cache's blobs, least recently used first."""
    found = []
    for path in Path(cache).glob("*.blob"):
        try:
            st = path.stat()
        except OSError:
            continue  # removed meanwhile
        meta = None
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(sidecar_of(path).read_bytes())
            meta = meta if isinstance(meta, dict) else None
        found.append(Entry(path, st.st_size, st.st_atime, meta))
    return sorted(found, key=lambda e: (e.last_use, e.path.name))


def remove_blob(blob: Path) -> bool:
    """Remove `blob` and its sidecar unless a process holds it (see the module's doc): whether
    this call removed it."""
    try:
        f = open(blob, "rb")
    except FileNotFoundError:
        sidecar_of(blob).unlink(missing_ok=True)
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            pass  # no locks on this filesystem: removed anyway (an importer keeps its open file)
        try:
            st = os.fstat(f.fileno())
            now = blob.stat()
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return False  # a new blob was renamed over it since it was opened
            blob.unlink()
        except FileNotFoundError:
            return False
        sidecar_of(blob).unlink(missing_ok=True)
        return True


def enforce(cache: Path, limit: int, keep: Path | None = None) -> list[Entry]:
    """Remove the least recently used blobs until the cache holds `limit` bytes or less, never
    `keep` (the blob just written, which stays even alone over the limit) nor one in use."""
    found = entries(cache)
    total = sum(e.bytes for e in found)
    removed = []
    for entry in found:
        if total <= limit:
            break
        if keep is not None and entry.path == keep:
            continue
        if remove_blob(entry.path):
            total -= entry.bytes
            removed.append(entry)
    return removed


def remove_orphan_sidecars(cache: Path) -> None:
    for sidecar in Path(cache).glob("*.blob" + SIDECAR):
        if not sidecar.with_name(sidecar.name[:-len(SIDECAR)]).exists():
            sidecar.unlink(missing_ok=True)


def store(written: Path, blob: Path, meta: dict, limit: int) -> bool:
    """Rename the blob OpenVINO `written` into the cache as `blob` with its sidecar, then bring
    the cache back under `limit`.  False (and nothing left behind) where the disk is full."""
    with open(written, "rb") as f:
        lock_shared(f.fileno())  # the blob being written: no other process's pruning removes it
        os.replace(written, blob)
        try:
            write_sidecar(blob, meta)
        except OSError:
            with contextlib.suppress(OSError):
                st, now = os.fstat(f.fileno()), blob.stat()
                if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                    blob.unlink()
            return False
        enforce(blob.parent, limit, keep=blob)
    return True
