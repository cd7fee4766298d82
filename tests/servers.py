"""A real `sdcli serve` process for the tests that drive one over HTTP (test_serve_process,
test_openai_api, test_mcp)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


class ServeProcess:
    """`sdcli serve ... --port 0` in its own process; its stderr collected in `lines`, its URL
    read from the line saying where it serves."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "sdcli", "serve", "--port", "0", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: list[str] = []
        self.port = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if "serving" in line and "http://127.0.0.1:" in line:
                    self.port = int(line.split("http://127.0.0.1:")[1].split()[0])
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(120) and self.port, "".join(self.lines)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
