"""sdcli/bench/rounds.py: --append continues a benchmark's rounds after the runs it keeps (round
numbers, rotation and the report's round count), counting only the runs of the same names and
fields; appended_runs reads them from --output-dir's bench.json only when asked."""
from __future__ import annotations

import json
import os
import sys

from sdcli.bench.rounds import bench_parser, appended_runs, measure_rounds


def quick(name: str):
    return [sys.executable, "-c", "print('{}')"], dict(os.environ)


def test_append_continues_the_rounds():
    report = {"rounds": 1, "runs": [{"config": "a", "round": 0}, {"config": "b", "round": 0},
                                    {"config": "z", "round": 7}]}  # another configuration's rounds: not counted
    done = measure_rounds(report, ["a", "b"], quick, 1, warm_up=[], log=lambda line: None)
    assert [(r["config"], r["round"], r["rc"]) for r in done] == [("b", 1, 0), ("a", 1, 0)]  # round 1 rotated
    assert report["runs"][-2:] == done and report["rounds"] == 2


def test_fields_separate_the_rounds():
    report = {"rounds": 1, "runs": [{"peer": "p", "arch": "rrdbnet", "round": 3}]}
    done = measure_rounds(report, ["p"], quick, 1, key="peer", fields={"arch": "compact"}, warm_up=[],
                          log=lambda line: None)
    assert [(r["arch"], r["round"]) for r in done] == [("compact", 0)] and report["rounds"] == 1


def test_earlier_runs_only_with_append(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({"runs": [{"config": "a", "round": 0}]}))
    parser = bench_parser("x", tmp_path, rounds=1)
    assert appended_runs(parser.parse_args(["--output-dir", str(tmp_path)])) == []
    assert appended_runs(parser.parse_args(["--output-dir", str(tmp_path), "--append"])) == [{"config": "a", "round": 0}]
    assert appended_runs(parser.parse_args(["--output-dir", str(tmp_path / "none"), "--append"])) == []


def test_warm_ups_run_twice_each_before_the_rounds(tmp_path):
    # sdcli writes a compiled model's blob on its second run: the rounds must come after both
    log = tmp_path / "calls.txt"

    def counting(name: str):
        return [sys.executable, "-c", f"open({str(log)!r}, 'a').write('{name}\\n'); print('{{}}')"], dict(os.environ)

    report = {"rounds": 0, "runs": []}
    done = measure_rounds(report, ["a", "b"], counting, 1, log=lambda line: None)
    assert log.read_text().split() == ["a", "a", "b", "b", "a", "b"]
    assert [r["config"] for r in done] == ["a", "b"] and report["warm_ups"] == 2
