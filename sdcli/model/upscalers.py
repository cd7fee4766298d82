"""Converted upscalers (`sdcli convert` of an ESRGAN-family or other super-resolution checkpoint):
where they are kept and what each folder holds.

A folder `<upscaler dir>/<name>/` holds `openvino_model.xml`/`.bin` (input `image`, float32
[1, C, H, W] in 0..1, any H and W; output `upscaled`, [1, C, H*scale, W*scale]) and
`upscaler.json` (its scale, architecture, channels, size requirements and tiling hint).

The upscaler folder: --upscaler-dir, else $SDCLI_UPSCALER_DIR, else models/ESRGAN (A1111's
folder name for its model upscalers).  Lanczos and Nearest are built in (no folder).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sdcli.util.errors import UsageError
from sdcli.util.fsutil import chosen_folder

UPSCALER_ENV = "SDCLI_UPSCALER_DIR"
DEFAULT_UPSCALER_DIR = Path("models/ESRGAN")
INFO_FILE = "upscaler.json"
IR_FILE = "openvino_model.xml"
INPUT_NAME, OUTPUT_NAME = "image", "upscaled"
BUILTIN = ("Lanczos", "Nearest")  # A1111's non-model upscalers (PIL's resize)


def upscaler_dir(given: Path | None = None) -> tuple[Path, str]:
    """(the upscaler folder, how it was chosen: the flag, the variable or the default)."""
    return chosen_folder(given, "--upscaler-dir", UPSCALER_ENV, DEFAULT_UPSCALER_DIR)


@dataclass
class UpscalerFolder:
    """One converted model upscaler."""

    name: str
    root: Path
    info: dict = field(default_factory=dict)

    @property
    def xml(self) -> Path:
        return self.root / IR_FILE

    @property
    def scale(self) -> int:
        return int(self.info["scale"])

    @property
    def channels(self) -> int:
        return int(self.info.get("input_channels", 3))

    @property
    def size_requirements(self) -> dict:
        return self.info.get("size_requirements", {})

    @staticmethod
    def is_upscaler(folder: Path) -> bool:
        return (folder / INFO_FILE).is_file() and (folder / IR_FILE).is_file()

    @classmethod
    def open(cls, folder: Path) -> "UpscalerFolder":
        folder = Path(folder)
        try:
            info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
            int(info["scale"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{folder} is not a converted upscaler ({INFO_FILE} unreadable: {exc})") from None
        if not (folder / IR_FILE).is_file():
            raise UsageError(f"{folder} is not a converted upscaler (no {IR_FILE})")
        return cls(folder.name, folder, info)


def list_upscalers(folder: Path | None = None) -> list[UpscalerFolder]:
    """The converted upscalers in the upscaler folder, by name."""
    root, _ = upscaler_dir(folder)
    if not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir(), key=lambda p: p.name.lower()):
        if child.is_dir() and UpscalerFolder.is_upscaler(child):
            try:
                found.append(UpscalerFolder.open(child))
            except UsageError:
                continue
    return found


def find_upscaler(name: str, folder: Path | None = None) -> UpscalerFolder:
    """The converted upscaler `name`: a folder's name in the upscaler folder (case as given, else
    the only case-insensitive match), or a path to an upscaler folder.  UsageError naming the
    folder searched when there is none."""
    path = Path(name).expanduser()
    if ("/" in name or os.sep in name) and path.is_dir():
        return UpscalerFolder.open(path)
    root, how = upscaler_dir(folder)
    if root.is_dir():
        exact = root / name
        if exact.is_dir() and UpscalerFolder.is_upscaler(exact):
            return UpscalerFolder.open(exact)
        matches = [u for u in list_upscalers(folder) if u.name.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
    have = [u.name for u in list_upscalers(folder)]
    known = ", ".join([*BUILTIN, *have])
    raise UsageError(f"upscaler {name!r} not found in {root} ({how}; set by --upscaler-dir or ${UPSCALER_ENV}); "
                     f"available: {known}")
