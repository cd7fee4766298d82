"""Property-based tests of the batch-file readers (sdcli/batch/rows.py): rows written to a
.txt, .jsonl or .csv file read back as they were; garbage never raises anything but
UsageError (the whole file) or RowError (one row); output names never leave the folder."""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdcli.batch.rows import (
    MAX_NAME_BYTES,
    ROW_FIELDS,
    BatchOptions,
    RowError,
    make_job,
    parse_rows,
    read_text,
    safe_file_name,
)
from sdcli.util.errors import UsageError

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text as people type it: any character but surrogates (not encodable) and NUL.
chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
text = st.text(chars, max_size=40)
one_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r"), max_size=40)


def write(tmp: Path, name: str, data: bytes | str) -> str:
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


# --- round trips ----------------------------------------------------------------------

@SETTINGS
@given(prompts=st.lists(one_line, max_size=12))
def test_txt_round_trip(tmp_path_factory, prompts):
    tmp = tmp_path_factory.mktemp("txt")
    file = write(tmp, "p.txt", "\n".join(prompts) + "\n")
    rows = parse_rows(read_text(file), "txt", file)
    kept = [(number, p.strip()) for number, p in enumerate(prompts, start=1)
            if p.strip() and not p.strip().startswith("#")]
    assert [(r.line, r.values["prompt"]) for r in rows] == kept
    assert [r.index for r in rows] == list(range(len(kept)))


field_values = {
    "prompt": text, "negative_prompt": text, "scheduler": text, "init_image": text, "name": text,
    "seed": st.integers(0, 2**64 - 1), "steps": st.integers(-5, 2000), "width": st.integers(-8, 4096),
    "height": st.integers(-8, 4096), "guidance_scale": st.floats(-1e3, 1e3, allow_nan=False),
    "strength": st.floats(-1, 2, allow_nan=False),
}
jsonl_row = st.fixed_dictionaries({"prompt": text}, optional={k: v for k, v in field_values.items() if k != "prompt"})


@SETTINGS
@given(rows=st.lists(jsonl_row, max_size=10), ascii_only=st.booleans())
def test_jsonl_round_trip(tmp_path_factory, rows, ascii_only):
    tmp = tmp_path_factory.mktemp("jsonl")
    file = write(tmp, "p.jsonl", "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows))
    parsed = parse_rows(read_text(file), "jsonl", file)
    assert [r.error for r in parsed] == [None] * len(rows)
    assert [r.values for r in parsed] == rows
    assert [r.line for r in parsed] == list(range(1, len(rows) + 1))


csv_cell = st.text(chars, max_size=30).filter(lambda s: s.strip() != "")


@SETTINGS
@given(columns=st.lists(st.sampled_from(ROW_FIELDS), unique=True, max_size=5), data=st.data())
def test_csv_round_trip(tmp_path_factory, columns, data):
    columns = ["prompt", *[c for c in columns if c != "prompt"]]
    columns = data.draw(st.permutations(columns))
    rows = data.draw(st.lists(st.fixed_dictionaries({c: csv_cell for c in columns}), max_size=8))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    tmp = tmp_path_factory.mktemp("csv")
    file = write(tmp, "p.csv", buffer.getvalue())
    parsed = parse_rows(read_text(file), "csv", file)
    assert [r.error for r in parsed] == [None] * len(rows)
    assert [r.values for r in parsed] == rows


# --- garbage ----------------------------------------------------------------------------

def _check_every_row(rows, tmp: Path) -> None:
    opts = BatchOptions(file="x", output_dir=tmp)
    for row in rows:
        try:
            job = make_job(row, opts, 0, tmp, "model")
        except RowError as exc:
            assert str(exc) and "\n" not in str(exc)
            continue
        _assert_inside(job.file, tmp)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=300), text.map(lambda s: s.encode("utf-8"))),
       fmt=st.sampled_from(["txt", "jsonl", "csv"]))
def test_garbage_raises_only_the_modules_own_errors(tmp_path_factory, data, fmt):
    tmp = tmp_path_factory.mktemp("garbage")
    file = write(tmp, f"p.{fmt}", data)
    try:
        rows = parse_rows(read_text(file), fmt, file)
    except UsageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _check_every_row(rows, tmp)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(rows=st.lists(st.one_of(st.dictionaries(st.sampled_from(ROW_FIELDS), json_value, max_size=6),
                               json_value), max_size=8))
def test_jsonl_rows_of_any_json_fail_alone(tmp_path_factory, rows):
    tmp = tmp_path_factory.mktemp("anyjson")
    file = write(tmp, "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _check_every_row(parse_rows(read_text(file), "jsonl", file), tmp)


# --- names --------------------------------------------------------------------------------

def _assert_inside(name: str, folder: Path) -> None:
    assert name == os.path.basename(name) and "/" not in name and "\\" not in name
    assert not name.startswith(".") and name.endswith(".png") and "\x00" not in name
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert (folder / name).resolve().parent == folder.resolve()


names = st.one_of(
    text,
    st.lists(st.sampled_from(["..", ".", "/", "\\", "a", "b.png", "~", "\x00", "\x1b", "\u202e", "é", "C:", " "]),
             max_size=8).map("".join),
)


@SETTINGS
@given(name=names)
def test_names_never_leave_the_output_folder(tmp_path_factory, name):
    folder = tmp_path_factory.mktemp("names")
    try:
        safe = safe_file_name(name)
    except RowError:
        return
    _assert_inside(safe, folder)


@SETTINGS
@given(prompt=text.filter(lambda s: s.strip()), seed=st.integers(0, 2**64 - 1), index=st.integers(0, 99_999))
def test_generated_names_are_plain(tmp_path_factory, prompt, seed, index):
    from sdcli.batch.rows import Row

    folder = tmp_path_factory.mktemp("slugs")
    try:
        job = make_job(Row(1, index, {"prompt": prompt, "seed": seed}), BatchOptions(file="x", output_dir=folder),
                       0, folder, "model")
    except RowError as exc:  # e.g. an emphasis weight out of range
        assert "weight" in str(exc)
        return
    assert re.fullmatch(rf"{index:05d}-[a-z0-9-]+-{seed}\.png", job.file)
    _assert_inside(job.file, folder)


def test_a_bad_txt_file_is_one_clear_error(tmp_path):
    file = write(tmp_path, "p.txt", b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="not UTF-8"):
        read_text(file)


def test_a_row_s_key_changes_with_the_batch_wide_settings_and_not_at_their_defaults(tmp_path):
    """A re-run with another --vae, --deepcache, --clip-skip or --precision makes its rows again
    (their key differs); at the defaults the key is the one rows finished before these were keyed."""
    from dataclasses import replace

    from sdcli.batch.rows import Row

    row = Row(1, 0, {"prompt": "a fox", "seed": 3})
    base = BatchOptions(file="x", output_dir=tmp_path, unset=("vae",))
    key = make_job(row, base, 0, tmp_path, "model").key
    assert key == "b2ad795f5e276df2"  # the key these settings had before batch-wide options were keyed
    changed = [replace(base, vae="tiny", unset=()), replace(base, deepcache=2), replace(base, clip_skip=2),
               replace(base, precision="f32")]
    keys = {make_job(row, opts, 0, tmp_path, "model").key for opts in changed}
    assert len(keys) == len(changed) and key not in keys
