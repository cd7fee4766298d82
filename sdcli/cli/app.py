"""The `sdcli` Typer app, and what every command shares: errors as one line and an exit
code, warnings, option checks.  Each command lives in its own module of this package."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import typer
from typer.core import TyperGroup

from sdcli import IMPORTED_AT, __version__
from sdcli.schedulers import A1111_NAMES, resolve_scheduler_name, scheduler_names
from sdcli.util.breakdown import process_age as proc_age
from sdcli.util.errors import SdcliError, UsageError, error_text, is_run_failure, one_line

# click's exception classes as this Typer has them (its own copy of click from 0.20 on)
_CLICK_USAGE_ERROR, _CLICK_EXCEPTION = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                                        for name in ("UsageError", "ClickException"))


class OneLineUsageErrors(TyperGroup):
    """Click's own usage errors (an unknown flag, a value it cannot parse, a missing one) as
    one line like sdcli's (`sdcli: error: ...`) with exit 2, not click's usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `sdcli` alone: the help, as click gives it
                exc.show()
                sys.exit(exc.exit_code)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            print(f"sdcli: error: {one_line(exc.format_message())}{where}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except _CLICK_EXCEPTION as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("sdcli: interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)  # what click's standalone mode exits with


app = typer.Typer(
    cls=OneLineUsageErrors,
    help="Stable Diffusion on an ordinary CPU, through OpenVINO.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]", which rich would eat as markup
)

STATE = {"debug": False}


def process_age() -> float:
    """Seconds since this process started (interpreter start-up included where /proc tells,
    else since sdcli's first line)."""
    age = proc_age()
    return age if age is not None else time.perf_counter() - IMPORTED_AT


INTERNAL_ERROR = 70  # sysexits' EX_SOFTWARE: an unexpected exception, i.e. a bug in sdcli


def fail(exc: BaseException) -> None:
    """Print one line for `exc` and exit with its code (full traceback with --debug): 2 for a
    usage error, 1 for a valid run that failed (sdcli's own errors, the system's I/O and
    memory errors, OpenVINO's failed file streams), 70 for anything else, which is a bug."""
    if STATE["debug"]:
        traceback.print_exception(exc)
    if isinstance(exc, SdcliError):
        code, line = exc.exit_code, f"error: {error_text(exc)}"
    elif is_run_failure(exc):
        code, line = 1, f"error: {error_text(exc)}"
    else:
        hint = "" if STATE["debug"] else " (rerun with --debug for the traceback)"
        code, line = INTERNAL_ERROR, f"internal error: {error_text(exc)}{hint}"
    line = one_line(line)
    print(f"sdcli: {line}", file=sys.stderr)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted"):
    """Every command's body runs in this: an error becomes one line and an exit code
    (see `fail`), Ctrl-C a short note and 130."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        print(f"sdcli: {interrupted}", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        fail(exc)


def warn(message: str) -> None:
    """Warnings go to stderr even with --quiet: they say the result is not what was asked."""
    print(f"sdcli: warning: {message}", file=sys.stderr)


def _print_version(value: bool) -> None:
    if value:
        print(f"sdcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, expose_value=False,
                                 help="Print the version and exit."),
):
    STATE["debug"] = debug


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C does: temporary files and folders are removed on the way
    # out, finished images stay.  OpenVINO runs a UNet step without returning to Python,
    # so this lands within one step.
    print("sdcli: terminated", file=sys.stderr)
    raise SystemExit(143)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app()


# --- option checks shared by the commands --------------------------------------------

def finite(value: Optional[float]) -> Optional[float]:
    if value is not None and not math.isfinite(value):  # click's FloatRange lets nan through
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def positive_multiple_of_8(value: Optional[int]) -> Optional[int]:
    if value is not None and (value <= 0 or value % 8):
        raise typer.BadParameter(f"must be a positive multiple of 8, got {value}")
    return value


def scheduler_name(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    try:
        return resolve_scheduler_name(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def list_schedulers(value: bool) -> None:
    if value:
        for name in scheduler_names():
            print(f"{name:<18} {A1111_NAMES[name]}")
        raise typer.Exit(0)


CACHE_MAX_GB_HELP = ("The compiled-model cache's bound in GB: the least recently used blobs are removed to keep "
                     "under it; 0: no cache, compile every time [default: $SDCLI_CACHE_MAX_GB, else 20 or a "
                     "quarter of the cache disk's free space, whichever is less].")


def use_cache_max_gb(value: Optional[float]) -> None:
    """--cache-max-gb: checked, and passed on through $SDCLI_CACHE_MAX_GB, which every Runtime
    reads (also those of serve's workers and batch's row runners); without it the variable is
    checked as it is."""
    from sdcli.runtime.blob_cache import MAX_ENV, parse_max_gb

    if value is not None:
        os.environ[MAX_ENV] = repr(float(value))
    elif os.environ.get(MAX_ENV, "").strip():
        parse_max_gb(os.environ[MAX_ENV])


def option_given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def check_creatable(folder: Path, flag: str) -> None:
    """`folder` can be made: the nearest part of its path that exists is a writable folder."""
    parent = folder.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot create {folder}: {parent} is not a writable folder")


def image_output_paths(images: list[Path], output: Optional[Path], output_dir: Optional[Path], folder: Optional[Path],
                       name: Callable[[Path], str], command: str, what: str) -> list[Path]:
    """Where each of `images`' results goes (sdcli upscale, sdcli detect): --output for one image,
    else name(image) in --output-dir (default `folder`, or the image's own folder where `folder` is
    None); none may be one of the inputs, come twice, or be other than a PNG."""
    if output is not None:
        if output_dir is not None:
            raise UsageError("--output and --output-dir: give one")
        if len(images) != 1:
            raise UsageError(f"--output names one file, and {len(images)} images were given: use --output-dir")
        paths = [output]
    else:
        paths = [(output_dir if output_dir is not None else folder if folder is not None else image.parent)
                 / name(image) for image in images]
    if len({p.resolve() for p in paths}) != len(paths):
        raise UsageError(f"two {what} would be written to the same file (same names): use separate runs or "
                         "--output-dir")
    inputs = {p.resolve() for p in images}
    for path in paths:
        if path.resolve() in inputs:
            raise UsageError(f"{path} is one of the images: choose another --output or --output-dir")
        if path.suffix.lower() != ".png":
            raise UsageError(f"{path}: {command} writes PNG files (.png)")
        check_creatable(path, "--output" if output is not None else "--output-dir")
    return paths


def quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # not "nncf": a logger made before NNCF's import lacks its NNCFLogger methods, and the import
    # resets its level anyway (sdcli.convert.ir quiets it once imported)
    for name in ("transformers", "diffusers", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def library_output(quiet: bool):
    """While converting: rich's shared console, which NNCF's progress bars draw on, goes to stderr
    (stdout is for the command's result), or nowhere with --quiet."""
    try:
        from rich import get_console
    except ImportError:  # no rich, no bars
        yield
        return
    console = get_console()
    before = console.quiet, console.stderr
    console.quiet, console.stderr = quiet or console.quiet, True
    try:
        yield
    finally:
        console.quiet, console.stderr = before
