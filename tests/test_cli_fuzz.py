"""Fuzz runs of every command's argument space, in-process (issues 7 and 13): `generate` with
the tiny model, random combinations of its flags with good, boundary and garbage values; then
`convert`, `batch`, `info`, `bench`, `bench-features` and `serve`, the long work of each
stubbed out where a valid run would start it (conversion after its checks, the benchmarks,
the listening server), so that what is fuzzed is their checking of arguments, files and
folders.  Whatever comes in: no uncaught exception, exit code 0, 1 or 2 — never 70, which a
bug (any unexpected exception) gives —, an error as one line (click's usage lines aside), no
traceback, and generate's exit 0 only with the image written.  The server's request fields
are fuzzed in test_serve_fuzz.py.  Seeds are fixed (derandomize): a failure repeats."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.schedulers import A1111_NAMES, scheduler_names
from sdcli.util.errors import SdcliError

EXAMPLES = 50

# garbage: short text without digits (a number made of random digits could ask for 900 steps)
garbage = st.text(st.characters(blacklist_categories=("Cs", "Nd")), max_size=8)
prompt_text = st.text(st.sampled_from(list("ab ,()[]:\\1.5") + ["🦊", "ש", "\u202e", "\x00"]), max_size=30)


def _values(good, *bad, odds: int = 8):
    """Mostly good values (so that many runs get to generate), one in `odds` bad or garbage."""
    wrong = st.one_of(garbage, *(st.just(b) for b in bad)) if bad else garbage
    return st.integers(0, odds - 1).flatmap(lambda roll: wrong if roll == 0 else good).map(str)


def _checked(good, *bad):
    """For the commands whose checks are fuzzed: (a strategy of one value in three bad or
    garbage, the bad values, which test_each_bad_value tries one by one)."""
    return _values(good, *bad, odds=3), bad


FLAGS = {
    "--prompt": _values(prompt_text),
    "--negative-prompt": _values(prompt_text),
    "--steps": _values(st.integers(1, 3), "0", "-1", "1001", "1.5"),
    "--strength": _values(st.floats(0.5, 1.0), "nan", "inf", "-0.5", "1.5"),
    "--guidance-scale": _values(st.floats(0, 20), "nan", "inf", "1e400", "-1", "120"),
    "--seed": _values(st.integers(0, 2**64 - 1), "-1", str(2**64)),
    "--width": _values(st.sampled_from([8, 16, 32, 40]), "0", "-8", "12"),
    "--height": _values(st.sampled_from([8, 16, 32, 40]), "0", "-8", "12"),
    "--num-images": _values(st.integers(1, 2), "0", "-1"),
    "--mask-blur": _values(st.integers(0, 8), "-1", "257"),
    "--clip-skip": _values(st.integers(1, 2), "0", "25"),
    "--deepcache": _values(st.integers(1, 3), "0"),
    "--scheduler": _values(st.sampled_from(scheduler_names() + list(A1111_NAMES.values())), "nope", ""),
    "--precision": _values(st.sampled_from(["auto", "f32", "bf16"]), "f64", ""),
    "--rng": _values(st.sampled_from(["torch", "numpy"]), "dice"),
    "--vae": _values(st.just("full"), "tiny", "x"),
    "--device": _values(st.just("CPU"), "XYZ", ""),
    "--init-image": _values(st.sampled_from(["rgb.png", "gray.png"]), "one.png", "empty.png", "text.png", "missing.png"),
    "--mask": _values(st.sampled_from(["mask.png", "rgb.png"]), "empty.png", "missing.png"),
    "--output": _values(st.just("o.png"), "o.jpg", "", "sub/o.png"),
}
SWITCHES = ["--emphasis", "--no-emphasis", "--low-memory", "--json"]

arguments = st.tuples(
    st.lists(st.sampled_from(sorted(FLAGS)), unique=True, max_size=6).flatmap(
        lambda chosen: st.fixed_dictionaries({k: FLAGS[k] for k in chosen})),
    st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    from sdcli.imaging.image_io import save_png

    d = tmp_path_factory.mktemp("fuzz-files")
    y, x = np.mgrid[0:40, 0:56]
    save_png(d / "rgb.png", np.stack([x * 4, y * 6, x + y], axis=-1).astype(np.uint8))
    save_png(d / "gray.png", np.repeat((x * 4).astype(np.uint8)[:, :, None], 3, axis=2))
    save_png(d / "mask.png", np.repeat(np.where(x < 28, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2))
    save_png(d / "one.png", np.zeros((1, 1, 3), np.uint8))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    return d


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(arguments)
def test_generate_never_crashes(tiny_eps, files, tmp_path_factory, args):
    values, switches = args
    out = tmp_path_factory.mktemp("fuzz")
    argv = ["generate", "--model", str(tiny_eps.ov_dir), "--prompt", "a fox", "--steps", "2", "--width", "32",
            "--height", "32", "--quiet"]
    for flag, value in values.items():
        if flag in ("--init-image", "--mask"):
            value = str(files / value)
        elif flag == "--output":
            value = str(out / value) if value else value
        argv += [flag, value]
    if "--output" not in values:
        argv += ["--output", str(out / "o.png")]
    argv += switches
    result = CliRunner().invoke(app, argv)

    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
    assert "internal error" not in result.output, (argv, result.output)
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
    event(f"exit {result.exit_code}")  # pytest --hypothesis-show-statistics shows the mix
    assert "Traceback" not in result.output, argv
    errors = [line for line in result.stderr.splitlines() if line.startswith(("sdcli: error:", "Error:"))]
    if result.exit_code == 0:
        assert not errors, (argv, result.stderr)
        assert any(p.suffix == ".png" for p in out.rglob("*.png")), (argv, result.stderr)
    else:
        assert len(errors) == 1, (argv, result.stderr)
        if result.exit_code == 1:  # a failure during a valid run: finished images may stay
            assert len(result.stderr.strip().splitlines()) == 1, (argv, result.stderr)
        else:
            assert not list(out.rglob("*.png")), (argv, "a refused run wrote an image")
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")], argv


# --- every other command -------------------------------------------------------------------------
FUZZ = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ERROR_STARTS = ("sdcli: error:",)
ALLOWED_LINES = ERROR_STARTS + ("sdcli: ",)  # sdcli's notes and warnings


def _event(text: str) -> None:
    if currently_in_test_context():  # the sweep below runs outside hypothesis
        event(text)


def check_cli(result, argv, rows_may_fail: bool = False) -> None:
    """The rule every command keeps: exit 0, 1 or 2 (never 70, a bug), no traceback, and a
    failure said in one error line (warnings aside), click's parse errors too.  `rows_may_fail`:
    batch's exit 1 says one line per bad row."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
    assert "internal error" not in result.output, (argv, result.output)
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
    _event(f"exit {result.exit_code}")
    assert "Traceback" not in result.output, (argv, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_STARTS)]
    if result.exit_code == 0:
        assert not errors, (argv, result.stderr)
        return
    if rows_may_fail and result.exit_code == 1:  # a line per bad row, and the count of them
        assert errors and re.fullmatch(r"\d+ done, \d+ failed, \d+ skipped \(already done\)", lines[-1]), \
            (argv, result.stderr)
        lines = lines[:-1]
    else:
        assert len(errors) == 1, (argv, result.stderr)
    assert all(line.startswith(ALLOWED_LINES) for line in lines), (argv, result.stderr)


def invoke(argv: list[str], cwd: Path, patches: dict | None = None, **kwargs):
    """Run sdcli in-process in the folder `cwd` (defaults such as bench-results/ and models/ are
    relative), with `patches` ({(module, name): value}) in place."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.delenv("SDCLI_MODEL", raising=False)
        for (module, name), value in (patches or {}).items():
            mp.setattr(module, name, value)
        return CliRunner().invoke(app, argv, **kwargs)


@pytest.fixture(scope="module")
def world(tiny_eps, files, tmp_path_factory) -> dict:
    """Files and folders the commands are pointed at: the tiny model (diffusers and converted, and a
    converted copy that --into may change), a PNG with settings and one without, prompts files of
    each format with good and bad rows, READMEs with and without a bench block, bench reports
    good and broken, a broken model folder, empty and text files."""
    import shutil

    from sdcli.imaging.image_io import save_png

    d = tmp_path_factory.mktemp("fuzz-world")
    shutil.copytree(tiny_eps.ov_dir, d / "into-model")
    (d / "models" / "tiny").mkdir(parents=True)
    for name in ("model_index.json", "scheduler"):
        src = Path(tiny_eps.ov_dir) / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / "models" / "tiny" / name)
    (d / "broken").mkdir()
    (d / "broken" / "model_index.json").write_text("{not json")
    (d / "empty-dir").mkdir()
    (d / "empty.txt").write_text("")
    (d / "text.txt").write_text("hello\n")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    save_png(d / "plain.png", np.zeros((8, 8, 3), np.uint8))
    from sdcli.imaging.image_io import encode_png

    (d / "made.png").write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8),
        "a fox\nNegative prompt: rain\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 8x8"))
    (d / "odd.png").write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8), "Steps: x, Size: 9x"))
    (d / "prompts.txt").write_text("a fox\n# a comment\n\nrain\n")
    (d / "rows.jsonl").write_text('{"prompt": "a fox", "seed": 3}\n{"prompt": 5}\n{"steps": "x"}\nnot json\n[1, 2]\n'
                                  '{"prompt": "b", "width": 12}\n{"prompt": "c", "init_image": "missing.png"}\n'
                                  '{"prompt": "d", "steps": 2, "init_image": "x\\ny.png"}\n')
    (d / "rows.csv").write_text('prompt,seed,steps\n"a fox",1,1\nb,-5,1\nc,1,x\n"d""",\n')
    (d / "rows.jsonl.txt").write_text('{"prompt": "a"}\n')
    readme_text = "# x\n<!-- bench:local:start -->\nold\n<!-- bench:local:end -->\n" \
                  "<!-- bench:features-local:start -->\nold\n<!-- bench:features-local:end -->\n"
    for name in ("readme.md", "readme-copy.md"):
        (d / name).write_text(readme_text)
    (d / "no-block.md").write_text("# no block\n")
    (d / "latin1.md").write_bytes("caf\xe9 <!-- bench:local:start -->".encode("latin-1"))
    for name, text in (("bench-garbage", "{not json"), ("bench-empty", "{}"), ("bench-list", "[1]"),
                       ("bench-partial", '{"summary": [{"peer": 3}], "machine": null, "size": "x", "precision": 1}')):
        (d / name).mkdir()
        (d / name / "bench.json").write_text(text)
        (d / name / "features.json").write_text(text)
    return {"dir": d, "ov": Path(tiny_eps.ov_dir), "diffusers": Path(tiny_eps.diffusers_dir), "files": files}


def _path(world: dict, value: str) -> str:
    """A name from the strategies below as a path: @ov, @diffusers, @into are the tiny model's
    folders; other names starting with @ are files of `world`; anything else stays as it is."""
    if not value.startswith("@"):
        return value
    name = value[1:]
    if name in ("ov", "diffusers"):
        return str(world[name])
    if name == "into":
        return str(world["dir"] / "into-model")
    return str(world["dir"] / name)


def _argv(world: dict, command: list[str], values: dict, switches: list[str], out: Path) -> list[str]:
    argv = list(command)
    for flag, value in values.items():
        if flag.startswith("ARG"):
            argv.append(_path(world, value))
        elif value.startswith("@out"):
            argv += [flag, str(out / value[4:].lstrip("/"))]
        else:
            argv += [flag, _path(world, value)]
    return argv + switches


def _arguments(flags: dict, switches: list[str], max_flags: int = 5):
    return st.tuples(
        st.lists(st.sampled_from(sorted(flags)), unique=True, max_size=max_flags).flatmap(
            lambda chosen: st.fixed_dictionaries({k: flags[k][0] for k in chosen})),
        st.lists(st.sampled_from(switches), max_size=2, unique=True),
    )


class Stopped(SdcliError):
    """Raised by a stub where a command's long work would start (exit 1)."""


CONVERT_FLAGS = {
    "ARG source": _checked(st.sampled_from(["@diffusers", "@ov", "@broken", "@empty-dir", "@text.txt", "@binary.bin",
                                            "owner/model", "x.safetensors", "@made.png"]), "", " ", "../..", "a/b/c/d"),
    "--output": _checked(st.sampled_from(["@out/converted", "@out/a/b"]), "@text.txt", "@ov", "", "/proc/x"),
    "--weight-format": _checked(st.sampled_from(["fp16", "fp32", "int8"]), "int4", ""),
    "--quantize": _checked(st.just("hybrid"), "full", ""),
    "--calibration-prompts": _checked(st.sampled_from(["@prompts.txt"]), "@empty.txt", "@binary.bin", "@missing.txt",
                                     "@empty-dir"),
    "--calibration-samples": _checked(st.integers(4, 64), "3", "0", "2001", "x"),
    "--config": _checked(st.sampled_from(["@diffusers", "owner/model"]), "@text.txt", "@missing", ""),
    "--lora": _checked(st.sampled_from(["@text.txt", "@missing.safetensors", "@empty-dir"]), "", "owner/lora"),
    "--lora-scale": _checked(st.floats(-2, 2), "nan", "inf", "x"),
    "--scheduler": _checked(st.sampled_from(scheduler_names() + ["lcm"]), "nope", ""),
    "--timestep-spacing": _checked(st.sampled_from(["leading", "trailing", "linspace"]), "nope", ""),
    "--default-steps": _checked(st.integers(1, 50), "0", "-1", "1001", "1.5"),
    "--default-guidance": _checked(st.floats(0, 30), "nan", "-1", "1e400", "101"),
    "--default-vae": _checked(st.sampled_from(["full", "tiny"]), "medium", "", "Tiny"),
    "--tiny-vae": _checked(st.sampled_from(["@text.txt", "@missing", "@empty-dir", "@ov"]), "", "owner/taesd"),
    "--into": _checked(st.sampled_from(["@into", "@into"]), "@diffusers", "@broken", "@text.txt", "@missing", ""),
}


def run_convert(world, out: Path, values: dict, switches: list[str]):
    """convert with the conversion itself stubbed (export's load_components raises Stopped,
    an exit 1 here), as is a tiny VAE's loading."""
    import sdcli.convert.export as export
    import sdcli.convert.tiny_vae as tiny_vae

    def stop(*args, **kwargs):
        raise Stopped("the conversion would start here")

    if "ARG source" not in values and "--into" not in values:
        values = {"ARG source": "@diffusers", **values}
    argv = _argv(world, ["convert", "--quiet"], values, switches, out)
    result = invoke(argv, out, {(export, "load_components"): stop, (tiny_vae, "load_tiny_vae"): stop})
    check_cli(result, argv)
    if "would start here" in result.stderr:
        _event("reached the conversion")


@settings(max_examples=120, **FUZZ)
@given(_arguments(CONVERT_FLAGS, ["--force", "--allow-pickle"]))
def test_convert_never_crashes(world, tmp_path_factory, args):
    """convert's checks, from SOURCE to --into's settings."""
    run_convert(world, tmp_path_factory.mktemp("fuzz-convert"), *args)


BATCH_FLAGS = {
    "ARG file": _checked(st.sampled_from(["@prompts.txt", "@rows.jsonl", "@rows.csv"]), "@empty.txt", "@binary.bin",
                        "@missing.txt", "@empty-dir", "@made.png", "-", "@rows.jsonl.txt", ""),
    "--output-dir": _checked(st.sampled_from(["@out/o", "@out/a/b"]), "@text.txt", "", "/proc/x"),
    "--format": _checked(st.sampled_from(["txt", "jsonl", "csv"]), "json", "", "TXT"),
    "--steps": _checked(st.just(1), "0", "1001", "x"),
    "--width": _checked(st.sampled_from([8, 16]), "0", "12", "-8"),
    "--height": _checked(st.sampled_from([8, 16]), "0", "12", "-8"),
    "--seed": _checked(st.integers(0, 2**64 - 1), "-1", str(2**64)),
    "--strength": _checked(st.floats(0, 1), "nan", "2"),
    "--guidance-scale": _checked(st.floats(0, 20), "nan", "inf", "-1"),
    "--guidance-rescale": _checked(st.floats(0, 1), "nan", "2"),
    "--init-image": _checked(st.just("@plain.png"), "@text.txt", "@missing.png", "@empty.txt"),
    "--scheduler": _checked(st.sampled_from(scheduler_names()), "nope", ""),
    "--precision": _checked(st.sampled_from(["auto", "f32"]), "f64", ""),
    "--rng": _checked(st.sampled_from(["torch", "numpy"]), "dice"),
    "--vae": _checked(st.just("full"), "tiny", "x"),
    "--device": _checked(st.just("CPU"), "XYZ", ""),
    "--deepcache": _checked(st.integers(1, 2), "0"),
    "--clip-skip": _checked(st.integers(1, 2), "0", "25"),
    "--parallel": _checked(st.sampled_from(["auto", "1", "2"]), "0", "65", "-1", "x", ""),
    "--ray-cpus-per-actor": _checked(st.just(1), "0", "x"),
    "--lora-dir": _checked(st.just("@empty-dir"), "@missing", "@text.txt"),
    "--embeddings-dir": _checked(st.just("@empty-dir"), "@missing", "@text.txt"),
    "--model": _checked(st.just("@ov"), "@broken", "@missing", "@empty-dir", "@text.txt", "", "owner/model"),
}


def run_batch(world, out: Path, values: dict, switches: list[str]):
    """batch on the tiny model at 16 pixels (8 to 16 where a flag says), 1 step."""
    argv = _argv(world, ["batch", "--quiet", "--model", str(world["ov"]), "--steps", "1", "--width", "16",
                         "--height", "16"], values, switches, out)
    if "ARG file" not in values:
        argv.insert(1, str(world["dir"] / "prompts.txt"))
    if "--output-dir" not in values:
        argv += ["--output-dir", str(out / "o")]
    result = invoke(argv, out, input="a fox\n\nrain\n")
    check_cli(result, argv, rows_may_fail=True)
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")], argv


@settings(max_examples=30, **FUZZ)
@given(_arguments(BATCH_FLAGS, ["--json", "--shared-output", "--allow-pickle"]))
def test_batch_never_crashes(world, tmp_path_factory, args):
    """batch's checks of FILE, its rows and its flags (--ray is left out: it would look for a
    cluster)."""
    run_batch(world, tmp_path_factory.mktemp("fuzz-batch"), *args)


INFO_TARGETS = ["@ov", "@diffusers", "@into", "@broken", "@empty-dir", "@made.png", "@odd.png", "@plain.png",
                "@text.txt", "@binary.bin", "@missing", "@empty.txt", "", "@models", "@models/tiny"]


@settings(max_examples=30, **FUZZ)
@given(st.lists(st.sampled_from(INFO_TARGETS), max_size=1), st.lists(st.just("--json"), max_size=1))
def test_info_never_crashes(world, tmp_path_factory, targets, switches):
    argv = ["info", *(_path(world, t) for t in targets), *switches]
    result = invoke(argv, tmp_path_factory.mktemp("fuzz-info"))
    check_cli(result, argv)
    if result.exit_code == 0 and switches:
        import json

        json.loads(result.stdout)


BENCH_FLAGS = {
    "--steps": _checked(st.sampled_from(["4,20", "1", "2,", " 3 "]), "0", "-1,2", "a,b", ",", ""),
    "--rounds": _checked(st.integers(1, 3), "0", "-1", "x"),
    "--peers": _checked(st.sampled_from(["sdcli", "sdcli,genai", "optimum", "diffusers", "sdcli,optimum"]), "", ",", "gpu"),
    "--modes": _checked(st.sampled_from(["cold", "warm", "cold,warm"]), "", "hot", ","),
    "--optimum-python": _checked(st.sampled_from(["@missing", "@text.txt"]), ""),
    "--size": _checked(st.sampled_from([64, 512]), "0", "12", "-8", "x"),
    "--precision": _checked(st.sampled_from(["auto", "f32", "bf16"]), "f64", ""),
    "--weight-format": _checked(st.sampled_from(["fp16", "fp32", "int8"]), "int4", ""),
    "--workdir": _checked(st.just("@out/work"), "@text.txt", ""),
    "--output-dir": _checked(st.sampled_from(["@out/results", "@bench-garbage", "@bench-empty", "@bench-list",
                                             "@bench-partial", "@missing"]), "@text.txt", ""),
    "--sdcli-arg": _checked(st.sampled_from(["--steps", "4", "--vae"]), ""),
    "--guidance-scale": _checked(st.floats(0, 100), "nan", "-1", "101"),
    "--arch": _checked(st.sampled_from(["sd15", "sdxl", "tiny", "tiny-sdxl"]), "sd3", ""),
    "--readme": _checked(st.sampled_from(["@readme.md", "@no-block.md", "@latin1.md"]), "@missing.md", "@empty-dir",
                        "@binary.bin"),
    "--readme-block": _checked(st.sampled_from(["local", "features-local"]), "", "nope"),
}


def run_bench(world, out: Path, values: dict, switches: list[str]):
    """bench with the benchmark itself stubbed (it writes a bench.md)."""
    import sdcli.bench.peers as peers

    def stub(workdir, output_dir, *args, **kwargs):
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "bench.md").write_text("| stub |\n")
        (output_dir / "bench.json").write_text("{}")

    argv = _argv(world, ["bench"], values, switches, out)
    check_cli(invoke(argv, out, {(peers, "run_bench"): stub}), argv)


@settings(max_examples=120, **FUZZ)
@given(_arguments(BENCH_FLAGS, ["--tiny-vae", "--no-run"], max_flags=6))
def test_bench_never_crashes(world, tmp_path_factory, args):
    """bench's checks and --no-run's README rendering from bench.json files good and broken."""
    run_bench(world, tmp_path_factory.mktemp("fuzz-bench"), *args)


FEATURES_FLAGS = {
    "--cases": _checked(st.sampled_from(["deepcache", "tiny_vae,lcm", "quantize", "throughput"]), "", ",", "turbo"),
    "--rounds": _checked(st.integers(1, 3), "0", "x"),
    "--size": _checked(st.sampled_from([64, 512]), "0", "12", "x"),
    "--arch": _checked(st.sampled_from(["sd15", "tiny"]), "sdxl", ""),
    "--batch-images": _checked(st.integers(2, 8), "1", "9", "x"),
    "--batch-steps": _checked(st.integers(1, 8), "0", "x"),
    "--workdir": _checked(st.just("@out/work"), "@text.txt", ""),
    "--output-dir": _checked(st.sampled_from(["@out/results", "@bench-garbage", "@bench-empty", "@bench-list",
                                             "@bench-partial", "@missing"]), "@text.txt", ""),
    "--readme": _checked(st.sampled_from(["@readme-copy.md", "@no-block.md", "@latin1.md"]), "@missing.md",
                        "@empty-dir", "@binary.bin"),
    "--readme-block": _checked(st.sampled_from(["features-local", "local"]), "", "nope"),
}


def run_bench_features(world, out: Path, values: dict, switches: list[str]):
    """bench-features with the benchmark stubbed (it writes a features.md)."""
    import sdcli.bench.features as features

    def stub(workdir, output_dir, *args, **kwargs):
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "features.md").write_text("| stub |\n")

    argv = _argv(world, ["bench-features"], values, switches, out)
    check_cli(invoke(argv, out, {(features, "run_features"): stub}), argv)


@settings(max_examples=80, **FUZZ)
@given(_arguments(FEATURES_FLAGS, ["--no-run", "--no-warm-up"], max_flags=6))
def test_bench_features_never_crashes(world, tmp_path_factory, args):
    """bench-features' checks and --no-run's rendering."""
    run_bench_features(world, tmp_path_factory.mktemp("fuzz-features"), *args)


SERVE_FLAGS = {
    "--model": _checked(st.sampled_from(["@ov", "@models/tiny"]), "@broken", "@missing", "@empty-dir", "@text.txt", "",
                       "owner/model"),
    "--models-dir": _checked(st.sampled_from(["@models", "@empty-dir"]), "@missing", "@text.txt", ""),
    "--host": _checked(st.sampled_from(["127.0.0.1", "::1", "localhost"]), "", "999.0.0.1", "1.2.3.4:5", "a\x00b",
                      "x" * 300, "é.invalid"),
    "--port": _checked(st.just(0), "-1", "65536", "x", "1"),
    "--api-auth": _checked(st.sampled_from(["u:p", "u:p,v:q"]), "", "u", ":p", "u:", "u:p,", ","),
    "--queue-size": _checked(st.integers(0, 64), "-1", "10001", "x"),
    "--precision": _checked(st.sampled_from(["auto", "f32", "bf16"]), "f64", ""),
    "--lora-dir": _checked(st.just("@empty-dir"), "@missing", "@text.txt"),
    "--embeddings-dir": _checked(st.just("@empty-dir"), "@missing", "@text.txt"),
}


def run_serve(world, out: Path, values: dict, switches: list[str]):
    """serve up to the listening socket (bound on port 0 unless --port says otherwise); the
    server itself is stubbed: it closes the socket."""
    import sdcli.serve.server as server

    argv = _argv(world, ["serve", "--port", "0", "--models-dir", str(world["dir"] / "models")], values, switches, out)
    check_cli(invoke(argv, out, {(server, "run"): lambda sock, *args, **kwargs: sock.close()}), argv)


@settings(max_examples=120, **FUZZ)
@given(_arguments(SERVE_FLAGS, ["--allow-pickle"], max_flags=5))
def test_serve_never_crashes(world, tmp_path_factory, args):
    """serve's checks."""
    run_serve(world, tmp_path_factory.mktemp("fuzz-serve"), *args)


SWEPT = {"convert": (run_convert, CONVERT_FLAGS, {}), "bench": (run_bench, BENCH_FLAGS, {}),
         "batch": (run_batch, BATCH_FLAGS, {"ARG file": "@empty.txt"}),  # no rows: every check, no generating
         "bench-features": (run_bench_features, FEATURES_FLAGS, {}), "serve": (run_serve, SERVE_FLAGS, {})}
ODD_TEXT = ["é\n2", "-", "--help-me", " "]  # besides each flag's own bad values


@pytest.mark.parametrize("command", sorted(SWEPT))
def test_each_bad_value(world, tmp_path_factory, command):
    """Every bad value of every flag of the table above, one at a time on an otherwise good
    command line (the random runs above may not draw each), and a few odd texts."""
    runner, flags, base = SWEPT[command]
    for flag, (_, bad) in flags.items():
        for value in (*bad, *(ODD_TEXT if command != "batch" else ())):  # batch's checks open the model: slower
            runner(world, tmp_path_factory.mktemp(f"sweep-{command}"), {**base, flag: value}, [])


# --- what the fuzz found, kept as plain cases ------------------------------------------------------
@pytest.mark.parametrize("command, report, readme, message", [
    ("bench", "bench-empty", "readme.md", "is not a report of sdcli's benchmark (KeyError: 'summary')"),
    ("bench", "bench-garbage", "readme.md", "is not a report of sdcli's benchmark (JSONDecodeError"),
    ("bench", "bench-partial", "readme.md", "is not a report of sdcli's benchmark"),
    ("bench-features", "bench-list", "readme-copy.md", "is not a report of sdcli's benchmark (TypeError"),
    ("bench", "results", "latin1.md", "latin1.md is not UTF-8 text"),
    ("bench-features", "results", "latin1.md", "latin1.md is not UTF-8 text"),
])
def test_no_run_with_a_broken_report_or_readme_is_a_usage_error(world, tmp_path, command, report, readme, message):
    """--no-run --readme with a bench.json that is not sdcli's, or a README that is not UTF-8,
    exited 70 (KeyError, JSONDecodeError, UnicodeDecodeError)."""
    results = tmp_path / "results"
    results.mkdir()
    good = {"summary": [], "machine": {"cpu": "x", "cores": 2, "memory_gb": 1, "openvino": "1", "date": "d"},
            "size": 64, "precision": "f32", "arch": "tiny", "rounds": 1, "cases": {}, "targets": []}
    (results / "bench.json").write_text(json.dumps(good))
    (results / "features.json").write_text(json.dumps(good))
    folder = results if report == "results" else world["dir"] / report
    argv = [command, "--no-run", "--output-dir", str(folder), "--readme", str(world["dir"] / readme)]
    result = invoke(argv, tmp_path)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_serve_host_with_a_nul_is_a_usage_error(world, tmp_path):
    """--host 'a\\0b' exited 70 (socket's TypeError)."""
    import sdcli.serve.server as server

    argv = ["serve", "--model", str(world["ov"]), "--port", "0", "--host", "a\x00b"]
    result = invoke(argv, tmp_path, {(server, "run"): lambda sock, *args, **kwargs: sock.close()})
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stderr == "sdcli: error: --host 'a\\x00b' is not a host name or address: " \
                            "host name must not contain null character\n"


@pytest.mark.parametrize("argv, shown", [
    (["convert", "--quiet", "a\nb"], "a\\nb"), (["serve", "--model", "a\nb"], "a\\nb"),
    (["batch", "a\nb", "--output-dir", "o"], "a\\nb"), (["info", "a\r\nb"], "a\\r\\nb"),
    (["serve", "--embeddings-dir", "\x1e:\x0b\u2028\x1b[1m"], "\\x1e:\\x0b\\u2028\\x1b[1m"),
])
def test_an_error_naming_a_value_with_a_newline_is_one_line(tmp_path, argv, shown):
    """The value is named with its newlines, line separators and control characters escaped: the
    error stays one line (for str.splitlines too)."""
    result = invoke(argv, tmp_path)
    assert result.exit_code in (1, 2), (result.exit_code, result.stderr)
    assert result.stderr.startswith("sdcli: error:") and len(result.stderr.splitlines()) == 1, result.stderr
    assert shown in result.stderr, result.stderr


def test_a_bad_row_naming_a_file_with_a_newline_is_one_line(world, tmp_path):
    """batch's row errors escape what they name too (a row's init_image with a newline split
    its error in two)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a", "steps": 2, "init_image": "x\\ny.png"}\n')
    argv = ["batch", str(rows), "--output-dir", str(tmp_path / "o"), "--model", str(world["ov"]), "--quiet",
            "--width", "16", "--height", "16"]
    result = invoke(argv, tmp_path)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.splitlines() == [f"sdcli: error: {rows}:1: image not found: {tmp_path}/x\\ny.png; row skipped",
                                          "0 done, 1 failed, 0 skipped (already done)"]
