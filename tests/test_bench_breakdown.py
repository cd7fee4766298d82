"""`sdcli bench`'s cheap logic: the per-process breakdown's arithmetic (sdcli generate --json's
and optimum-intel's runner's), its medians and table, the arch table (SD-Turbo included) and
the bench command's argument checks.  No model is built here."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sdcli.bench import peers
from sdcli.bench.peers import (ARCH_NAMES, ARCHS, FOLDER_DEFAULTS, TAESD_FLAGS, Run, breakdown_table, markdown,
                               summarize)
from sdcli.bench.runners import peer_breakdown
from sdcli.cli.app import app
from sdcli.util.breakdown import STAGES, generate_breakdown, with_exit

ENGINE_TIMINGS = {"encode_prompt": 0.9, "load_wait_encode": 0.4, "unet": 2.0, "denoise": 2.25, "decode": 0.5,
                  "load_wait_decode": 0.2, "load_wait": 1.6}


def test_generate_breakdown_adds_up_to_the_process_age_and_leaves_the_waits_out_of_the_work():
    b = generate_breakdown(ENGINE_TIMINGS, process_start=0.05, imports=1.2, png_write=0.1, total=8.0,
                           model_load_total=3.0)
    assert sum(b[k] for k in STAGES) == pytest.approx(8.0)
    assert b["model_load"] == 1.6  # what the main thread waited for, not all the loading
    assert b["text_encoder"] == pytest.approx(0.5)  # 0.9 encoding less its 0.4 wait for the encoder
    assert b["decode"] == pytest.approx(0.3)
    assert b["steps_other"] == pytest.approx(0.25)
    assert b["other"] == pytest.approx(8.0 - 0.05 - 1.2 - 1.6 - 0.5 - 2.0 - 0.25 - 0.3 - 0.1)
    assert (b["total"], b["model_load_total"]) == (8.0, 3.0)


def test_generate_breakdown_counts_a_wait_inside_the_loop_once():
    # a ControlNet still loading when the first step calls it: the wait is in the UNet's clock and in load_wait
    timings = {**ENGINE_TIMINGS, "unet": 5.5, "denoise": 5.75, "load_wait_denoise": 3.5, "load_wait": 5.1}
    b = generate_breakdown(timings, process_start=0.05, imports=1.2, png_write=0.1, total=11.5)
    assert b["unet"] == pytest.approx(2.0) and b["model_load"] == 5.1
    assert b["steps_other"] == pytest.approx(0.25)
    assert b["other"] == pytest.approx(11.5 - 0.05 - 1.2 - 5.1 - 0.5 - 2.0 - 0.25 - 0.3 - 0.1)
    assert b["other"] >= 0


def test_generate_breakdown_of_a_cached_prompt_has_no_text_encoder_time():
    timings = {k: v for k, v in ENGINE_TIMINGS.items() if k not in ("encode_prompt", "load_wait_encode")}
    b = generate_breakdown(timings, None, 0.5, 0.0, 5.0)
    assert b["text_encoder"] == 0 and b["process_start"] == 0
    assert sum(b[k] for k in STAGES) == pytest.approx(5.0)


def test_with_exit_is_the_wall_time_after_the_last_report():
    b = with_exit({"unet": 1.0, "total": 4.0}, 4.75)
    assert b["exit"] == pytest.approx(0.75) and b["wall"] == 4.75
    assert with_exit({}, 3.0) == {}


def test_optimum_breakdown_splits_its_call_into_its_models():
    b = peer_breakdown(0.04, 6.0, 9.0, text_encoder=0.3, unet=1.5, decode=0.2, call=2.25, total=17.5)
    assert b["steps_other"] == pytest.approx(0.25)
    assert b["other"] == pytest.approx(17.5 - 0.04 - 6.0 - 9.0 - 2.25)
    assert sum(v for k, v in b.items() if k != "total") == pytest.approx(17.5)


def _run(peer, wall, unet, rnd=0):
    breakdown = with_exit({"process_start": 0.05, "imports": 1.0, "unet": unet, "other": wall - 1.15,
                           "total": wall - 0.1}, wall)
    return Run(peer, "warm", 1, rnd, 0, wall, 1000.0, 0, {"step": unet, "breakdown": breakdown})


def test_summary_rows_carry_breakdown_medians_and_the_table_shows_them():
    runs = [_run("sdcli", 3.0, 1.0), _run("sdcli", 5.0, 2.0, 1), _run("sdcli", 4.0, 3.0, 2),
            _run("optimum", 10.0, 4.0)]
    rows = summarize(runs)
    mine = next(r for r in rows if r["peer"] == "sdcli")
    assert mine["breakdown_s"]["unet"] == 2.0 and mine["breakdown_s"]["wall"] == 4.0
    assert mine["breakdown_s"]["exit"] == pytest.approx(0.1)
    assert mine["wall_vs_optimum"] == 0.4
    info = {"cpu": "cpu", "cores": 2, "memory_gb": 1, "openvino": "x", "date": "d"}
    table = markdown(rows, info, 512, "auto", "sd-turbo", 3, 0.0, True)
    assert "SD-Turbo architecture" in table and "tiny VAE" in table
    head = next(line for line in table.splitlines() if line.startswith("| mode | steps | peer | process start"))
    assert "UNet" in head and "exit" in head and "wall" in head
    assert "| warm | 1 | optimum | 0.05 | 1.0 |" in table


def test_rows_without_breakdowns_render_as_before():
    runs = [Run("sdcli", "warm", 4, 0, 0, 3.0, 1.0, 0, {"step": 0.5}), Run("genai", "warm", 4, 0, 1, 4.0, 1.0, 0, {})]
    rows = summarize(runs)
    assert not any("breakdown_s" in r for r in rows)
    assert breakdown_table(rows) == ""


def test_every_arch_has_a_name_a_random_model_flag_and_a_taesd_where_one_fits():
    from sdcli.convert.random_model import argument_parser

    parser = argument_parser()
    for arch in ARCHS:
        assert arch in ARCH_NAMES
        assert getattr(parser.parse_args(["out", f"--{arch}"]), arch.replace("-", "_")) is True
    for arch, flag in TAESD_FLAGS.items():
        assert arch in ARCHS and parser.parse_args(["out", flag])
    assert "tiny-sdxl" not in TAESD_FLAGS  # its VAE (TINY's, a factor of 2) fits no random TAESD


def test_turbo_folder_defaults_are_valid_convert_settings():
    from sdcli.convert.defaults import model_scheduler_config, new_defaults
    from sdcli.convert.random_model import SD_TURBO, SD15_SCHEDULER

    for arch in ("sd-turbo", "tiny-sd-turbo"):
        flags = dict(zip(FOLDER_DEFAULTS[arch][::2], FOLDER_DEFAULTS[arch][1::2]))
        assert new_defaults(int(flags["--default-steps"]), float(flags["--default-guidance"])) == \
            {"steps": 1, "guidance_scale": 0.0}
        # on a folder whose scheduler is PNDM (as an SD 1.5 conversion), they make it sd-turbo's
        config = model_scheduler_config(flags["--scheduler"], flags["--timestep-spacing"],
                                        {"_class_name": "PNDMScheduler", **SD15_SCHEDULER}, SD_TURBO["unet"])
        assert config["_class_name"] == "EulerDiscreteScheduler" and config["timestep_spacing"] == "trailing"


@pytest.mark.parametrize("args, says", [
    (["--arch", "sd21"], "--arch takes"),
    (["--arch", "tiny-sdxl", "--tiny-vae", "--peers", "sdcli,optimum"], "no random tiny autoencoder"),
])
def test_bench_refuses_bad_arguments_before_running(args, says, tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "run_bench", lambda *a, **k: pytest.fail("ran"))
    result = CliRunner().invoke(app, ["bench", *args, "--workdir", str(tmp_path), "--output-dir", str(tmp_path),
                                      "--optimum-python", "python"])
    assert result.exit_code == 2, result.output
    assert says in result.stderr
