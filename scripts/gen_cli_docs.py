"""Write docs/cli.md: the `--help` of `sdcli` and of every command, as the Typer app prints it.

    python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md differs from the code

tests/test_docs.py checks that the file equals `render()`.  The help is rendered at a fixed
width (100 columns), whatever the terminal, so the file does not depend on who ran the script.
"""
from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
WIDTH = 100

HEADER = """# sdcli command-line reference

Generated from the Typer app by `python scripts/gen_cli_docs.py`; do not edit by hand
(`tests/test_docs.py` fails when this file and `sdcli --help` disagree). What each command is
for, with examples: [README.md](../README.md); more on models, the server and batches:
[models.md](models.md), [generating.md](generating.md), [server.md](server.md),
[batch.md](batch.md).
"""


def render() -> str:
    import click
    import typer

    import sdcli.cli  # noqa: F401  (registers every command)
    from sdcli.cli.app import app

    group = typer.main.get_command(app)
    root = click.Context(group, info_name="sdcli", terminal_width=WIDTH, max_content_width=WIDTH)
    parts = [HEADER, "## Commands\n", *(f"- [`sdcli {name}`](#sdcli-{name})" for name in group.commands), "",
             "## sdcli\n", "```text", group.get_help(root).rstrip(), "```", ""]
    for name, command in group.commands.items():
        ctx = click.Context(command, info_name=name, parent=root, terminal_width=WIDTH, max_content_width=WIDTH)
        parts += [f"## sdcli {name}\n", "```text", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        same = DOC.exists() and DOC.read_text(encoding="utf-8") == text
        print(f"{DOC}: {'up to date' if same else 'differs from the code; run python scripts/gen_cli_docs.py'}")
        return 0 if same else 1
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
