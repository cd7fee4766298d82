"""`sdcli convert --weight-format int8 --quiet` prints nothing: NNCF's statistics tables (its own
logger, `nncf`, writing to stdout) and its rich progress bars are kept quiet.  A tiny-model int8
conversion costs over 30 s on a 2-core machine, so this runs what convert runs around NNCF --
quiet_libraries, the library_output context and save_ir -- on a one-MatMul model, in a fresh
process (NNCF sets its logger up when first imported)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("nncf")

SCRIPT = """
import sys
import numpy as np
import openvino as ov
from openvino import opset13 as ops
from sdcli.cli.app import library_output, quiet_libraries
from sdcli.convert.ir import save_ir

x = ops.parameter([1, 64], np.float32, name="x")
w = ops.constant(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
model = ov.Model([ops.matmul(x, w, False, True)], [x])
quiet_libraries()
with library_output(quiet=sys.argv[2] == "quiet"):
    save_ir(model, __import__("pathlib").Path(sys.argv[1]), "int8")
"""


def compress(tmp_path, mode: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / mode), mode], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / mode / "openvino_model.xml").is_file()
    return r


def test_int8_compression_prints_nothing_when_quiet(tmp_path):
    r = compress(tmp_path, "quiet")
    assert r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)


def test_int8_compression_keeps_stdout_clean_otherwise(tmp_path):
    """Without --quiet NNCF's progress bar may show, on stderr: stdout is convert's output path only."""
    r = compress(tmp_path, "loud")
    assert r.stdout == "", r.stdout
    assert "Statistics of the bitwidth" not in r.stderr
