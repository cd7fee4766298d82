"""Errors the CLI turns into one line on stderr and an exit code."""


class SdcliError(Exception):
    """A failure during an otherwise valid run (exit code 1)."""

    exit_code = 1


class UsageError(SdcliError):
    """Something the user supplied is wrong: a flag, a file, a folder (exit code 2)."""

    exit_code = 2
