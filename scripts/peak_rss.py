"""Run a command and print its wall time and peak resident memory (its own and its
children's, as the kernel counts them), e.g. the peak of `sdcli convert` on SDXL:

    python scripts/peak_rss.py -- python -m sdcli convert SRC --output DST
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.perf_counter()
    rc = subprocess.run(argv).returncode
    wall = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"command": argv, "returncode": rc, "wall_s": round(wall, 1), "peak_rss_gb": round(peak_kb / 1e6, 2)}))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
