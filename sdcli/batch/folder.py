"""`sdcli batch`'s output folder: the lock that keeps one batch at a time in it, the
manifest of finished rows (repaired on start-up), and the base seed kept for re-runs.
See sdcli/batch/run.py for the whole story."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Optional

from sdcli.batch.rows import MANIFEST
from sdcli.engine.request import SEED_MAX
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_write_bytes

SEED_FILE = ".sdcli-batch.json"


@contextlib.contextmanager
def locked_dir(folder: Path) -> Iterator[int]:
    """An fd of `folder`, exclusively locked (one batch at a time writes into a folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except BlockingIOError:
            raise UsageError(f"another sdcli batch is writing into {folder}; wait for it or pick another --output-dir") from None
        yield fd
    finally:
        os.close(fd)


def remove_partial_files(folder: Path) -> list[str]:
    """Delete `.NAME.XXXX.part` temporaries left by an interrupted atomic write."""
    removed = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(".part") and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def load_manifest(folder: Path, planned: dict[str, str]) -> dict[str, dict]:
    """The manifest's entries by file, repaired: see the module docstring.  `planned`: file -> key."""
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    dirty = bool(raw) and not raw.endswith(b"\n")
    entries: "OrderedDict[str, tuple[dict, bytes]]" = OrderedDict()
    for chunk in raw.split(b"\n"):
        if not chunk.strip():
            continue
        try:
            entry = json.loads(chunk)
            file = entry["file"]
            if not isinstance(file, str) or os.path.basename(file) != file or file.startswith("."):
                raise ValueError(file)
        except (ValueError, KeyError, TypeError):
            dirty = True  # a line cut off by a kill, or not ours
            continue
        if file in entries:
            dirty = True
            del entries[file]
        entries[file] = (entry, chunk.strip())
    for file, (entry, _) in list(entries.items()):
        stale = file in planned and entry.get("key") != planned[file]
        if stale or not (folder / file).is_file():
            dirty = True
            del entries[file]
    if dirty:
        atomic_write_bytes(path, b"".join(chunk + b"\n" for _, chunk in entries.values()))
    return {file: entry for file, (entry, _) in entries.items()}


def append_manifest(folder: Path, line: str, dir_fd: int) -> None:
    with open(folder / MANIFEST, "ab") as f:
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


def resolve_base_seed(folder: Path, given: Optional[int]) -> tuple[int, bool]:
    """(base seed, whether it was kept from an earlier run into `folder`)."""
    if given is not None:
        return given, False
    path = folder / SEED_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        seed = json.loads(path.read_text())["base_seed"]
        if isinstance(seed, int) and 0 <= seed <= SEED_MAX:
            return seed, True
    seed = secrets.randbelow(2**32)
    atomic_write_bytes(path, json.dumps({"base_seed": seed}).encode() + b"\n")
    return seed, False
