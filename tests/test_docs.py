"""The documentation cannot drift from the code.

- docs/cli.md equals what `python scripts/gen_cli_docs.py` renders from the Typer app now.
- Every fenced ```bash block in README.md and docs/ that holds an `sdcli` command is marked, on
  the line before it, `<!-- example: run -->` or `<!-- example: parse -->`.
- `run` blocks are run, command by command in one fresh folder each, in this process (click's
  CliRunner), against a tiny random model built and converted once per session by the README's
  own quick-start block. Any `models/NAME` a block names is that tiny model; photo.jpg, room.jpg,
  mask.png, prompts.txt and rows.jsonl are small files made here. To keep this file fast,
  `generate` and `batch` get `--steps 2 --width 64 --height 64` appended (click: the last value
  of a flag wins), so an example's own flags are still parsed and checked.
- `parse` blocks (the Hub, large models, a server, Ray) have each command's flags parsed by
  click's `make_context`, callbacks included; nothing runs.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- example: (run|parse) -->$")
FAST = ["--steps", "2", "--width", "64", "--height", "64"]
QUICK_START_TMP = "/tmp/tiny-sd"


def blocks() -> list[tuple[str, int, str | None, str]]:
    """(page, line, marker or None, text) of every ```bash block holding an `sdcli` command."""
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").split("\n")
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```bash":
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
                text = "\n".join(lines[i + 1:end])
                marker = MARKER.match(lines[i - 1].strip()) if i else None
                if commands(text):
                    found.append((page.relative_to(ROOT).as_posix(), i + 1, marker and marker.group(1), text))
                i = end
            i += 1
    return found


def commands(text: str) -> list[list[str]]:
    """The commands of a block, as argument lists: continuation lines joined, comments dropped,
    split at `&&`; a `cat FILE | sdcli ...` pipe kept whole (run: FILE is stdin). Only `sdcli`
    and `python -m sdcli...` commands; `pip`, `ray`, `docker`, `curl` lines are not ours."""
    out = []
    for line in text.replace("\\\n", " ").split("\n"):
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            part, words = words[:cut], words[cut + 1:]
            if part and (part[0] == "sdcli" or part[0] == "cat" and "sdcli" in part
                         or part[:2] == ["python", "-m"] and part[2:3] and part[2].startswith("sdcli")):
                out.append(part)
    return out


ALL = blocks()
RUN = [b for b in ALL if b[2] == "run"]
PARSE = [b for b in ALL if b[2] == "parse"]


def ident(block) -> str:
    return f"{block[0]}:{block[1]}"


# ---------------------------------------------------------------- the CLI reference

def test_cli_reference_equals_the_code():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == gen.render(), \
        "docs/cli.md is stale: run python scripts/gen_cli_docs.py"


def test_the_cli_reference_covers_every_command():
    import typer

    from sdcli.cli import app

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in typer.main.get_command(app).commands:
        assert f"## sdcli {name}\n" in text


# ---------------------------------------------------------------- the examples are marked

def test_every_example_is_marked():
    unmarked = [ident(b) for b in ALL if b[2] is None]
    assert not unmarked, f"bash blocks with sdcli commands but no <!-- example: run|parse --> line: {unmarked}"
    assert RUN and PARSE


def test_the_readme_quick_start_is_run():
    quick = [b for b in RUN if b[0] == "README.md" and "random_model" in b[3]]
    assert len(quick) == 1 and QUICK_START_TMP in quick[0][3]


# ---------------------------------------------------------------- parse only

def parse(args: list[str]) -> None:
    import click
    import typer

    from sdcli.cli import app

    group = typer.main.get_command(app)
    root = click.Context(group, info_name="sdcli")
    assert args[0] == "sdcli" and args[1] in group.commands, args
    command = group.commands[args[1]]
    with command.make_context(args[1], list(args[2:]), parent=root):
        pass


@pytest.mark.parametrize("block", PARSE, ids=ident)
def test_parse_example(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    for args in commands(block[3]):
        parse(args[args.index("sdcli"):] if args[0] == "cat" else args)


# ---------------------------------------------------------------- run

def make_inputs(folder: Path) -> None:
    import cv2

    y, x = np.mgrid[0:64, 0:64]
    picture = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)
    for name in ("photo.jpg", "room.jpg"):
        cv2.imwrite(str(folder / name), picture)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:44] = 255
    cv2.imwrite(str(folder / "mask.png"), mask)
    (folder / "prompts.txt").write_text("a lighthouse\n# a comment\na corgi\n", encoding="utf-8")
    (folder / "rows.jsonl").write_text(json.dumps({"prompt": "a cat", "seed": 3}) + "\n", encoding="utf-8")


def run_command(args: list[str], cwd: Path) -> None:
    from typer.testing import CliRunner

    from sdcli.cli import app

    if args[0] == "python":  # python -m sdcli.MODULE ARGS: the module's main(ARGS), in this process
        main = importlib.import_module(args[2]).main
        main(args[3:])
        return
    stdin = None
    if args[0] == "cat":
        stdin = (cwd / args[1]).read_text(encoding="utf-8")
        args = args[args.index("sdcli"):]
    extra = FAST if args[1] in ("generate", "batch") else []
    result = CliRunner().invoke(app, [*args[1:], *extra], input=stdin)
    assert result.exit_code == 0, f"{shlex.join(args)}: exit {result.exit_code}: {result.output[-2000:]}"
    if "--output" in args and args[1] == "generate":
        out = Path(args[args.index("--output") + 1])
        assert out.exists() or Path(f"{out.with_suffix('')}-1.png").exists(), out


@pytest.fixture(scope="session")
def docs_tiny_model(tmp_path_factory) -> Path:
    """The README's quick start, run as written (its /tmp folder moved into pytest's): a tiny
    random model built, converted to models/tiny, and one image generated from it."""
    quick = next(b for b in RUN if b[0] == "README.md" and "random_model" in b[3])
    home = tmp_path_factory.mktemp("docs-quick-start")
    for args in commands(quick[3].replace(QUICK_START_TMP, str(home / "tiny-sd"))):
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(home)
            run_command(args, home)
    assert (home / "models" / "tiny" / "model_index.json").exists()
    return home / "models" / "tiny"


@pytest.mark.parametrize("block", [b for b in RUN if "random_model" not in b[3]], ids=ident)
def test_run_example(block, docs_tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    (tmp_path / "models").mkdir()
    names = set(re.findall(r"models/([\w.-]+)", block[3])) or {"tiny"}
    for name in names:
        (tmp_path / "models" / name).symlink_to(docs_tiny_model, target_is_directory=True)
    for args in commands(block[3]):
        run_command(args, tmp_path)


def test_quick_start_made_an_image(docs_tiny_model):
    assert (docs_tiny_model.parent.parent / "test.png").stat().st_size > 0
