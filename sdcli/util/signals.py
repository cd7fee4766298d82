"""Holding Ctrl-C and SIGTERM back while a few lines must run to the end together."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block are acted on when it ends (the first of
    them, by the handler that was in place), so the block is never cut in two: a batch's PNG and
    its manifest line, for one.  Signals reach only the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    # (a handler installed outside Python reads as None and could not be put back: that signal is left alone)
    previous = {sig: handler for sig in _HELD if (handler := signal.getsignal(sig)) is not None}

    def hold(signum, frame) -> None:
        caught.append(signum)

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])
