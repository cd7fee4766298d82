"""The converted networks of A1111 ControlNet's neural preprocessors ("annotators"): where they
are kept and how they are run.

`sdcli convert` writes each network (convert/annotators.py: Depth Anything V2, lineart;
convert/openpose.py: OpenPose's body, hand and face networks) as a folder
`<annotator folder>/<name>/` holding `openvino_model.xml`/`.bin` and `annotator.json`.  The
annotator folder: --annotator-dir, else $SDCLI_ANNOTATOR_DIR, else models/annotators (A1111
keeps these weights under its ControlNet extension's annotator/downloads).

The IRs run on the CPU in f32, each compiled once per process (dynamic height and width).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from sdcli.util.errors import UsageError
from sdcli.util.fsutil import chosen_folder

ANNOTATOR_ENV = "SDCLI_ANNOTATOR_DIR"
DEFAULT_ANNOTATOR_DIR = Path("models/annotators")
INFO_FILE, IR_FILE = "annotator.json", "openvino_model.xml"
INPUT_NAME = "image"


class MissingAnnotator(UsageError):
    """A preprocessor's network is not converted (a usage error: exit 2, HTTP 422)."""


def annotator_dir(given: Path | None = None) -> tuple[Path, str]:
    """(the annotator folder, how it was chosen: the flag, the variable or the default)."""
    return chosen_folder(given, "--annotator-dir", ANNOTATOR_ENV, DEFAULT_ANNOTATOR_DIR)


def find_annotator(name: str, folder: Path | None = None, source: str | None = None,
                   module: str | None = None) -> Path:
    """The IR (openvino_model.xml) of converted network `name`; MissingAnnotator, one line naming
    the preprocessor `module`, the folder searched and the file `source` to convert, when absent."""
    base, how = annotator_dir(folder)
    xml = base / name / IR_FILE
    if xml.is_file():
        return xml
    what = f"preprocessor {module or name} needs the network {name}" if module and module != name else \
        f"preprocessor {name} needs its network"
    convert = f": convert {source} with `sdcli convert FILE --allow-pickle`" if source else ""
    raise MissingAnnotator(f"{what}, not converted: no {xml} in the annotator folder {base} ({how}; --annotator-dir "
                           f"or ${ANNOTATOR_ENV} choose another){convert}")


_compiled: dict = {}
_lock = threading.Lock()


def compiled(xml: Path):
    """The IR compiled for the CPU in f32, kept while the process lives (keyed by the file's
    path, size and time, so a converted-again network is compiled again)."""
    xml = Path(xml)
    stat = xml.stat()
    key = (str(xml.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key not in _compiled:
            import openvino as ov

            _compiled[key] = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return _compiled[key]


def infer(xml: Path, inputs) -> dict[str, np.ndarray]:
    """The IR's outputs by name for `inputs`: an array (its first input) or {input name: array}."""
    model = compiled(xml)
    request = model.create_infer_request()
    result = request.infer(inputs if isinstance(inputs, dict) else {model.inputs[0]: inputs})
    return {port.get_any_name(): np.asarray(result[port]) for port in model.outputs}
