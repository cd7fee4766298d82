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
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops
from sdcli.cli.app import library_output, quiet_libraries
from sdcli.convert.ir import save_ir

x = ops.parameter([1, 64], np.float32, name="x")
w = ops.constant(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
model = ov.Model([ops.matmul(x, w, False, True)], [x])
quiet_libraries()
for mode in ("loud", "quiet"):  # one process, for the imports' sake
    with library_output(quiet=mode == "quiet"):
        save_ir(model, Path(sys.argv[1]) / mode, "int8")
    print(f"-- {mode} done", file=sys.stderr, flush=True)
"""


def test_int8_compression_prints_nothing_when_quiet(tmp_path):
    """Quiet: nothing at all.  Otherwise NNCF's progress bars show on stderr, never its tables, and
    stdout stays convert's output path only."""
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, encoding="utf-8", errors="replace",
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "loud" / "openvino_model.xml").is_file() and (tmp_path / "quiet" / "openvino_model.xml").is_file()
    assert r.stdout == "", r.stdout
    loud, quiet = r.stderr.split("-- loud done\n")
    assert quiet == "-- quiet done\n", r.stderr
    assert "Statistics of the bitwidth" not in loud, loud
