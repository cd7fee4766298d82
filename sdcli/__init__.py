"""sdcli: Stable Diffusion on an ordinary CPU, through OpenVINO, from the command line."""

import time as _time

__version__ = "0.1.0"
# when sdcli's own code started running (the interpreter's start-up before it: see
# sdcli.util.breakdown), for `sdcli generate --json`'s breakdown
IMPORTED_AT = _time.perf_counter()
