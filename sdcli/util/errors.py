"""Errors the CLI turns into one line on stderr and an exit code."""
import re

# control characters and line separators: escaped in an error, which stays one line whatever a name in it holds
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class SdcliError(Exception):
    """A failure during an otherwise valid run (exit code 1)."""

    exit_code = 1


class UsageError(SdcliError):
    """Something the user supplied is wrong: a flag, a file, a folder (exit code 2)."""

    exit_code = 2


def error_text(exc: BaseException) -> str:
    """One line saying what went wrong: our errors' own message, an OSError's reason and
    file, else the exception's type and the first line of its message."""
    if isinstance(exc, SdcliError):
        return str(exc)
    reason = stream_failure(exc)
    if reason is not None:
        return f"a model file could not be written or read (OpenVINO: {reason}); is the disk full?"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def stream_failure(exc: BaseException) -> str | None:
    """The reason of OpenVINO's RuntimeError for a C++ file stream that failed (saving an IR to
    a full disk raises "basic_ios::clear: iostream error"), else None: the system's I/O
    failing, not a bug."""
    if isinstance(exc, RuntimeError):
        return next((part.strip() for part in str(exc).splitlines() if "iostream error" in part), None)
    return None


def is_run_failure(exc: BaseException) -> bool:
    """A valid run that failed (exit 1), not a bug: sdcli's own errors, the system's I/O and
    memory errors, OpenVINO's failed file streams."""
    return isinstance(exc, (SdcliError, OSError, MemoryError)) or stream_failure(exc) is not None


def one_line(text: str) -> str:
    """`text` with its control characters and line separators escaped (\\n, \\x1b, \\u2028)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)
