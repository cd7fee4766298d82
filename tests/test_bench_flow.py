"""`sdcli bench --arch tiny-flux2-klein | tiny-z-image`: the transformer bench runs end to end on
the tests' tiny models (the session's fp32 conversions, linked into the bench's work folder),
every peer runs the folder's own steps, and bench.json / bench.md have what docs/performance.md
renders (sdcli/bench/flow.py).  One round, 32x32."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sdcli.bench.flow as flow
from sdcli.cli.app import app

OPTIMUM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-oi" / "bin" / "python"
FULL_FIELDS = ("load_compile", "text_encoder", "step", "vae_decode")
ROW_FIELDS = ("wall_s", "peak_rss_mb", "load_compile_s", "text_encoder_s", "step_s", "vae_decode_s")


def _bench(folder: Path, arch: str, tmp: Path, *args: str):
    work = tmp / "work"
    work.mkdir()
    os.symlink(folder, work / f"{arch}-random-ov-fp32")  # what ensure_flow_models would have made
    out = tmp / "out"
    result = CliRunner().invoke(app, ["bench", "--arch", arch, "--weight-format", "fp32", "--workdir", str(work),
                                      "--output-dir", str(out), "--size", "32", "--rounds", "1", *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), out


def _check(report: dict, md: str, steps: int, guidance: float, peers: tuple[str, ...], mode: str) -> None:
    assert report["bench"] == "flow" and report["size"] == 32 and report["weight_format"] == "fp32"
    assert report["folder_defaults"] == {"steps": steps, "guidance_scale": guidance}
    assert report["steps"] == [steps] and report["guidance_scale"] == guidance
    runs = {r["peer"]: r for r in report["runs"]}
    assert set(runs) == set(peers) and all(r["mode"] == mode for r in report["runs"])
    for peer, run in runs.items():
        if peer == "optimum" and run["error"]:
            continue  # a failure is recorded, and shown below
        assert run["returncode"] == 0 and not run["error"], run
        assert run["wall_s"] > 0 and run["peak_rss_mb"] > 50
        if peer.endswith("-text-encoder"):
            assert run["timings"]["load_compile"] > 0 and run["timings"]["text_encoder"] > 0
        else:  # every peer ran the folder's steps (genai's own default would be 50)
            assert all(run["timings"][k] is not None for k in FULL_FIELDS), run["timings"]
            assert run["timings"]["n_steps"] == steps
    rows = {r["peer"]: r for r in report["summary"]}
    for peer in peers:
        if rows[peer].get("runs"):
            assert all(rows[peer].get(k) is not None for k in ROW_FIELDS if not peer.endswith("-text-encoder")
                       or k in ("wall_s", "peak_rss_mb", "load_compile_s", "text_encoder_s")), rows[peer]
        else:
            assert rows[peer]["error"] and f"FAILED ({mode}): {rows[peer]['error']}" in md
    assert rows["sdcli"]["wall_vs_genai"] == round(rows["sdcli"]["wall_s"] / rows["genai"]["wall_s"], 3)
    assert rows["genai"]["settings"]["reshape"] is True and rows["genai"]["settings"]["cache_dir"] is True
    assert "TaylorSeer off" in md and "| mode | steps | peer | runs | wall_s | peak_rss_mb |" in md


def test_klein_bench_warm(tiny_klein, tmp_path):
    caches = tmp_path / "caches"
    args = ("--modes", "warm", "--peers", "sdcli,genai", "--no-text-encoder-apart", "--warm-cache", str(caches))
    report, md, out = _bench(tiny_klein[1], "tiny-flux2-klein", tmp_path, *args)
    _check(report, md, 4, 1.0, ("sdcli", "genai"), "warm")
    # bench.md is rendered from bench.json alone
    again = CliRunner().invoke(app, ["bench", "--no-run", "--output-dir", str(out)])
    assert again.exit_code == 0 and again.stdout.strip() == md.strip()
    # a later invocation adds a round after the first, the order rotated, from the caches the first warmed up
    assert sorted(p.name for p in caches.iterdir()) == ["warm-genai", "warm-sdcli"]
    assert len(list((caches / "warm-sdcli").rglob("*.blob"))) > 0
    more = CliRunner().invoke(app, ["bench", "--arch", "tiny-flux2-klein", "--weight-format", "fp32", "--workdir",
                                    str(tmp_path / "work"), "--output-dir", str(out), "--size", "32", "--rounds", "1",
                                    "--append", *args])
    assert more.exit_code == 0, more.output
    assert "warm-up sdcli (1)" not in more.stderr and "was warmed up before" in more.stderr
    runs = json.loads((out / "bench.json").read_text())["runs"]
    assert [(r["round"], r["position"], r["peer"]) for r in runs] == [
        (0, 0, "sdcli"), (0, 1, "genai"), (1, 0, "genai"), (1, 1, "sdcli")]
    assert all(r["returncode"] == 0 for r in runs)
    assert "medians of 2 rounds" in (out / "bench.md").read_text()


def test_z_image_bench_cold_with_the_text_encoders_apart_and_optimum(tiny_z_image, tmp_path):
    peers, extra = ["sdcli", "genai"], []
    if OPTIMUM_PYTHON.exists():  # optimum-intel's own virtualenv (scripts/optimum-venv.sh)
        peers.append("optimum")
        extra = ["--optimum-python", str(OPTIMUM_PYTHON)]
    report, md, _ = _bench(tiny_z_image[1], "tiny-z-image", tmp_path, "--modes", "cold", "--peers", ",".join(peers),
                           *extra)
    _check(report, md, 9, 0.0, (*peers, "sdcli-text-encoder", "genai-text-encoder"), "cold")
    assert "The text encoder alone" in md
    rows = {r["peer"]: r for r in report["summary"]}
    assert rows["sdcli-text-encoder"]["wall_vs_genai"] is not None


@pytest.mark.parametrize("args, says", [
    (["--arch", "tiny-z-image", "--peers", "diffusers"], "--peers takes"),
    (["--arch", "tiny-z-image", "--size", "40"], "multiple of 16"),
    (["--arch", "tiny-flux2-klein", "--weight-format", "int3"], "--weight-format takes"),
    (["--arch", "tiny-flux2-klein", "--sdcli-arg", "--vae"], "--sdcli-arg"),
    (["--arch", "tiny", "--weight-format", "int4"], "--weight-format takes"),
    (["--arch", "tiny", "--low-memory"], "--low-memory"),
    (["--arch", "tiny", "--append"], "--append: only with a transformer"),
])
def test_flow_bench_refuses_bad_arguments_before_running(args, says, tmp_path, monkeypatch):
    monkeypatch.setattr(flow, "run_flow_bench", lambda *a, **k: pytest.fail("ran"))
    result = CliRunner().invoke(app, ["bench", *args, "--workdir", str(tmp_path), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert says in result.stderr


def test_low_memory_target_line():
    report = {"arch": "flux2-klein", "weight_format": "int4", "size": 1024,
              "summary": [{"peer": "sdcli-low-memory", "runs": 3, "peak_rss_mb": 3900.0}]}
    assert "NOT met" in flow.low_memory_line(report) and "3815 MiB (4 GB)" in flow.low_memory_line(report)
    report["summary"][0]["peak_rss_mb"] = 3700.0
    assert ": met" in flow.low_memory_line(report)
    report["size"] = 512
    assert "target is for" in flow.low_memory_line(report)


def test_a_later_mode_keeps_the_earlier_mode_s_runs_of_the_same_settings_only(tmp_path):
    """session22.sh measures cold and warm in two invocations: the second keeps the first's runs
    where the folder, size, steps and machine are the same."""
    from sdcli.bench.peers import Run, earlier_runs

    machine = {"cpu": "x", "cores": 2}
    old = {"bench": "flow", "arch": "tiny-z-image", "size": 32, "precision": "auto", "weight_format": "int8",
           "sdcli_args": [], "guidance_scale": 0.0, "tiny_vae": False, "steps": [9], "machine": machine,
           "runs": [Run("sdcli", "cold", 9, 0, 0, 1.0, 100.0, 0).__dict__]}
    (tmp_path / "bench.json").write_text(json.dumps(old))
    report = {k: v for k, v in old.items() if k != "runs"}
    assert [r.peer for r in earlier_runs(tmp_path / "bench.json", report, ("warm",))] == ["sdcli"]
    assert earlier_runs(tmp_path / "bench.json", report, ("cold",)) == []  # a mode measured again replaces it
    # a second peer row measured later (session23.sh's genai-defaults) keeps the first peers' runs of that mode
    assert [r.peer for r in earlier_runs(tmp_path / "bench.json", report, ("cold",), ["genai-defaults"])] == ["sdcli"]
    assert earlier_runs(tmp_path / "bench.json", report, ("cold",), ["sdcli"]) == []
    assert earlier_runs(tmp_path / "bench.json", {**report, "steps": [4]}, ("warm",)) == []
    assert earlier_runs(tmp_path / "bench.json", {**report, "bench": None}, ("warm",)) == []
