"""analysis/ on the committed real example results (results/examples/)."""
import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import pytest

from analysis import load as aload
from analysis import track
from analysis.track_eval import evaluate
from conftest import REPO, assert_one_line_error, run_cli

EX = REPO / "results" / "examples"
RAM = sorted((EX / "vm").glob("*-default.json"))[0]
SWEEP = sorted((EX / "vm").glob("*-sweep.json"))[0]
GUEST = sorted((EX / "qemu-arm64-tcg").glob("*.json"))[0]
SERIES = sorted((EX / "series").glob("*.json"))


def bench_names(path: Path) -> list[str]:
    return [b["metadata"]["name"] for b in json.loads(path.read_text())["benchmarks"]]


def scaled_copy(src: Path, dst: Path, name: str, factor: float, drop: str | None = None) -> Path:
    """A copy of a real result with one benchmark's timings scaled (seconds per unit)."""
    data = json.loads(src.read_text())
    data["benchmarks"] = [b for b in data["benchmarks"] if b["metadata"].get("name") != drop]
    for b in data["benchmarks"]:
        if b["metadata"].get("name") == name:
            for r in b["runs"]:
                if "values" in r:
                    r["values"] = [v * factor for v in r["values"]]
    dst.write_text(json.dumps(data))
    return dst


def test_load_values_in_reported_unit_plain_and_gzip(tmp_path):
    run = aload.load(RAM)
    s = run.series["read-bw[64B,64MiB]@normal"]
    assert s.unit == "GB/s" and 1 < float(s.values.mean()) < 1000 and len(s.values) >= 6
    assert run.series["read-lat[64B,64MiB]@normal"].unit == "ns"
    gz = tmp_path / "run.json.gz"
    gz.write_bytes(gzip.compress(RAM.read_bytes()))
    assert (aload.load(gz).series["read-bw[64B,64MiB]@normal"].values == s.values).all()


@pytest.mark.parametrize("content,needle", [
    (b'{"benchmarks": [', "corrupt JSON"),
    (b'{"hello": 1}', "not a pyperf benchmark suite"),
    (b"\x1f\x8b\x08garbage", "unreadable"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, needle):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    assert_one_line_error(run_cli("report", str(bad)), 2, needle)
    assert_one_line_error(run_cli("compare", str(RAM), str(bad)), 2, needle)


def test_mixing_emulated_needs_flag():
    assert_one_line_error(run_cli("compare", str(RAM), str(GUEST)), 2, "--allow-emulated")
    assert run_cli("compare", str(RAM), str(GUEST), "--allow-emulated").returncode == 0


def test_compare_text_fits_a_cover_letter_and_finds_a_planted_change(tmp_path):
    slow = scaled_copy(RAM, tmp_path / "slow.json", "read-bw[64B,64MiB]@normal", 1.25, drop="zero[64MiB]@normal")
    proc = run_cli("compare", str(RAM), str(slow))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 72 for line in lines)
    assert "vm" in lines[0] and "normal" in lines[0] and "MWU" in lines[0]
    row = next(line for line in lines if line.strip().startswith("[64B,64MiB]@normal") and "-20.0%" in line)
    assert row.rstrip().endswith("worse")
    assert "only in" in proc.stdout and "zero[64MiB]@normal" in proc.stdout
    assert "geomean of all" in proc.stdout


def test_compare_formats(tmp_path):
    for fmt in ("markdown", "csv", "json"):
        proc = run_cli("compare", str(RAM), str(RAM), "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        if fmt == "markdown":
            assert proc.stdout.splitlines()[2].startswith("| section")
        elif fmt == "csv":
            rows = list(csv.reader(io.StringIO(proc.stdout)))
            assert rows[0][:3] == ["section", "benchmark", "base"] and len(rows) > 5
        else:
            data = json.loads(proc.stdout)
            assert all(r["verdict"] == "same" and r["ratio"] == 1.0 for c in data["comparisons"] for r in c["rows"])


def test_report_relative_to_reference():
    proc = run_cli("report", str(GUEST))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("[emulated]") and "ratio to device-ngnre" in out
    assert "device-ngnre: effective" in out and "inferred device" in out and "inferred normal" in out
    assert all(len(line) <= 72 for line in out.splitlines())
    data = json.loads(run_cli("report", str(GUEST), "--format", "json").stdout)
    row = data["rows"][0]
    assert row["normal-nc"]["ratio"] == pytest.approx(row["normal-nc"]["median"] / row["device-ngnre"]["median"])


def test_plots_are_real_pngs(tmp_path):
    proc = run_cli("plot", str(RAM), str(SWEEP), "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    names = {Path(line).name for line in proc.stdout.split()}
    assert {"bars.png", "latency-ecdf.png", "sweep-read-bw.png", "sweep-read-lat.png"} <= names
    for name in names:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000


def _series_dir(tmp_path: Path) -> Path:
    d = tmp_path / "vm"
    d.mkdir()
    for p in SERIES:
        shutil.copy(p, d / p.name)
    return d


def test_track_quiet_on_clean_series(tmp_path):
    d = _series_dir(tmp_path)
    proc = run_cli("track", str(d))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing moved" in proc.stdout


def test_track_flags_planted_5_percent_regression(tmp_path):
    d = _series_dir(tmp_path)
    newest = sorted(d.glob("*.json"))[-1]
    scaled_copy(newest, newest, "read-lat[64B,64MiB]@normal", 1.05)  # 5% more time per load
    proc = run_cli("track", str(d))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = [line for line in proc.stdout.splitlines() if not line.startswith("trend: ")]
    assert "regressed" in proc.stdout and all(len(line) <= 72 for line in table)
    data = json.loads(run_cli("track", str(d), "--format", "json").stdout.split("\ntrend:")[0])
    moved = [m for m in data["movements"] if m["verdict"] != "steady"]
    assert [m["name"] for m in moved] == ["read-lat[64B,64MiB]@normal"] and moved[0]["percent"] > 5
    png = d / "trends" / "read-lat[64B,64MiB]_at_normal.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_track_eval_on_real_series():
    runs = track.history(EX / "series", allow_emulated=False)
    big = evaluate(runs, track.WINDOW, 25.0, track.THRESHOLD, track.ALPHA)
    assert big["planted"] == 5 * (len(runs) - track.WINDOW) and big["detected"] == big["planted"]
    small = evaluate(runs, track.WINDOW, 5.0, track.THRESHOLD, track.ALPHA)
    assert small["false_positives"] == big["false_positives"] <= small["clean_checks"] // 10
    assert 0 < small["detected"] < small["planted"]  # 5% is inside this VM's run-to-run noise for DRAM


def test_track_needs_enough_runs(tmp_path):
    shutil.copy(RAM, tmp_path / RAM.name)
    assert_one_line_error(run_cli("track", str(tmp_path)), 2, "at least 3")
