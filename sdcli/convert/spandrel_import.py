"""Importing spandrel (the upscaler architectures) where torchvision is missing.

spandrel declares torchvision, but only two of its architectures, LaMa (inpainting) and
RestoreFormer (face restoration), import it, for three names; none of the upscalers sdcli
converts uses it.  PyPI has no CPU build of torchvision to go with a CPU-only torch, and its
CUDA build, installed beside one, breaks `import transformers`.  So sdcli installs spandrel with
`pip install --no-deps spandrel` and, when torchvision cannot be imported, gives spandrel's
import a stand-in for those three names (calling them raises), then takes it away again.
"""
from __future__ import annotations

import sys
import types


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"torchvision.transforms.functional.{name}: torchvision is not installed")

    return call


def import_spandrel():
    """The spandrel module (ImportError if spandrel is not installed)."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a build for another torch
        pass
    else:
        import spandrel

        return spandrel
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "torchvision" or k.startswith("torchvision.")}
    import enum

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
    functional.rotate = _unavailable("rotate")
    functional.normalize = _unavailable("normalize")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    standin = types.ModuleType("torchvision")
    standin.transforms = transforms
    standin.__spec__ = None
    modules = {"torchvision": standin, "torchvision.transforms": transforms,
               "torchvision.transforms.functional": functional}
    sys.modules.update(modules)
    try:
        import spandrel
    finally:
        for name in modules:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return spandrel
