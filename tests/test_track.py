"""`bench track` from a short history (issue 19) and `bench run --repeat N`.

The committed `results/examples/series-fast/` is 30 same-commit `bench run --fast
--workload write-bw --workload read-lat` files made on this project's shared VM, and
`series-fast-quiet/` 40 more from one `--repeat 40`; the goals are checked on both for
histories of 3, 5 and 10 files."""
import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from analysis import load as aload
from analysis import track
from analysis.track_eval import agrees, eval_track
from conftest import QUICK, REPO, run_cli

FAST = sorted((REPO / "results" / "examples" / "series-fast").glob("*.json"))
# 40 more of the same, made on a quieter machine (load average 0.4-1.1), 2026-12-01 12:19 UTC.
QUIET = sorted((REPO / "results" / "examples" / "series-fast-quiet").glob("*.json"))


def scaled(src: Path, dst: Path, factor: float) -> Path:
    """A copy of a real result with every value (seconds per loop) times factor."""
    data = json.loads(src.read_text())
    for b in data["benchmarks"]:
        for r in b["runs"]:
            if "values" in r:
                r["values"] = [v * factor for v in r["values"]]
    dst.write_text(json.dumps(data))
    return dst


def _dir(tmp_path: Path, files: list[Path]) -> Path:
    d = tmp_path / "machine"
    d.mkdir()
    for p in files:
        shutil.copy(p, d / p.name)
    return d


def _first_agreeing(k: int) -> int:
    """Index of the first k consecutive files whose summaries agree within 5% on every
    benchmark (the issue's condition), from the committed series."""
    runs = aload.load_many(FAST)
    for i in range(len(runs) - k + 1):
        if all(agrees(runs[i:i + k], name) for name in runs[i].series):
            return i
    pytest.fail("no agreeing history in series-fast")


def test_issue_scenario_three_files_and_a_copy_times_1_25_is_flagged(tmp_path):
    """The issue's reproduction: three files as history and a copy of the third with every
    value x1.25 as the newest.  Both benchmarks get 25% worse (GB/s falls, ns rises)."""
    i = _first_agreeing(3)
    hist = FAST[i:i + 3]
    d = _dir(tmp_path, hist)
    scaled(hist[-1], d / "20991231T000000Z-series.json", 1.25)
    proc = run_cli("track", str(d), "--format", "json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout.split("\ntrend:")[0])
    assert sorted(m["verdict"] for m in data["movements"]) == ["regressed", "regressed"]
    assert data["method"] == track.method_line(track.THRESHOLD, track.ALPHA)
    assert all(m["history_files"] == 3 for m in data["movements"])


def test_header_states_the_method_in_one_line(tmp_path):
    d = _dir(tmp_path, FAST[:4])
    proc = run_cli("track", str(d))
    assert proc.returncode in (0, 1) and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1] == track.method_line(track.THRESHOLD, track.ALPHA) and len(lines[1]) <= 72
    assert "prior 2%" in lines[1] and "floor proc sd" in lines[1] and "Holm p<0.01" in lines[1]
    assert "--alpha" in run_cli("track", "-h").stdout and "Mann-Whitney" not in run_cli("track", "-h").stdout


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_runs_is_one_line_and_exit_0(tmp_path, n):
    d = _dir(tmp_path, FAST[:n])
    proc = run_cli("track", str(d))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    (line,) = proc.stdout.splitlines()
    assert f"has {n} complete run" in line and "track needs 3" in line and "Traceback" not in line


def test_track_eval_says_too_few_too(tmp_path):
    proc = run_cli(str(_dir(tmp_path, FAST[:2])), module="analysis.track_eval")
    assert proc.returncode == 0 and "track needs 3" in proc.stdout, proc.stderr


def test_repeat_files_list_in_run_order():
    # A listing, a glob or `sorted()` must give the run order: -10 after -9, not after -1.
    from bench.runner import repeat_paths
    paths = repeat_paths(Path("r/m/20261201T000000Z-x.json"), 12)
    assert [p.name for p in paths[:2]] == ["20261201T000000Z-x-01.json", "20261201T000000Z-x-02.json"]
    assert sorted(paths) == paths and len(set(paths)) == 12
    assert [p.name for p in repeat_paths(Path("20261201T000000Z-x.json"), 3)][-1] == "20261201T000000Z-x-3.json"
    # The committed --repeat 40 series: its names sort in the order its runs started.
    assert [r.path.name for r in sorted(aload.load_many(QUIET), key=lambda r: r.date)] == [p.name for p in QUIET]


@pytest.mark.parametrize("series", [FAST, QUIET], ids=["series-fast", "series-fast-quiet"])
@pytest.mark.parametrize("window", [3, 5, 10])
def test_goals_on_the_committed_fast_series(window, series):
    """Issue 19's goals: a planted 25% on one benchmark found in >= 19 of 20 trials where
    the history agrees within 5%; same-commit newest runs flagged in <= 1 of 20."""
    runs = aload.load_many(series)
    r = eval_track(runs, window, [25.0], track.THRESHOLD, track.ALPHA)
    assert r["runs_checked"] == len(runs) - window >= 20
    assert r["runs_flagged"] * 20 <= r["runs_checked"], r
    assert r["planted_agree"][25.0] >= 1
    assert r["detected_agree"][25.0] * 20 >= 19 * r["planted_agree"][25.0], r


def test_a_clean_history_of_near_identical_files_is_no_hair_trigger(tmp_path):
    """Three copies of one file (zero between-file spread): the prior keeps a 3.5% change
    of the newest from being flagged, while 25% still is."""
    src = FAST[0]
    d = _dir(tmp_path, [])
    for k in range(3):
        shutil.copy(src, d / f"2099010{k + 1}T000000Z-series.json")
    scaled(src, d / "20990109T000000Z-series.json", 1.035)
    assert run_cli("track", str(d)).returncode == 0
    scaled(src, d / "20990109T000000Z-series.json", 1.25)
    assert run_cli("track", str(d)).returncode == 1


def test_repeat_makes_separate_invocations_that_track_and_compare_use(tmp_path):
    """--repeat 3: three complete files <stamp>-<label>-1..3.json, one after another
    (separate manager runs: their values do not interleave in time)."""
    res = tmp_path / "results"
    proc = run_cli("run", "--repeat", "3", "--workload", "read-lat", "--size", "1MiB", *QUICK,
                   "--results-dir", str(res), "--machine", "m", "--label", "rep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted((res / "m").glob("*.json"))
    assert [f.name.split("-", 1)[1] for f in files] == ["rep-1.json", "rep-2.json", "rep-3.json"]
    assert len({f.name.split("-", 1)[0] for f in files}) == 1
    assert proc.stdout.count("=== invocation ") == 3
    spans = []
    for f in files:
        dates = [datetime.fromisoformat(v) for b in json.loads(f.read_text())["benchmarks"]
                 for r in b["runs"] for v in [r.get("metadata", {}).get("date")] if v]
        spans.append((min(dates), max(dates)))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    assert run_cli("track", str(res / "m")).returncode in (0, 1)
    comp = run_cli("compare", *map(str, files[:1]), "--vs", *map(str, files[1:]))
    assert comp.returncode == 0 and "too few runs" not in comp.stdout, comp.stdout


def test_compare_names_the_repeat_command_when_too_few(tmp_path):
    proc = run_cli("compare", str(FAST[0]), str(FAST[1]))
    assert proc.returncode == 0
    assert "too few runs for a verdict" in proc.stdout and "python -m bench run --repeat 3" in proc.stdout


@pytest.mark.parametrize("args,needle", [(["--repeat", "0"], "--repeat 0"), (["--repeat", "2", "-o", "x.json"], "drop -o")])
def test_repeat_bad_input_is_one_line(tmp_path, args, needle):
    from conftest import assert_one_line_error

    assert_one_line_error(run_cli("run", "--workload", "read-lat", *QUICK, "--results-dir", str(tmp_path), *args),
                          2, needle)
