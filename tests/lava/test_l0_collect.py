"""guestkit.lava.l0_collect: the guest's framed files back out of LAVA logs, byte for byte;
bad logs are one line and exit 2."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_one_line_error, run_cli

from guestkit.lava import l0_collect

EXAMPLES = sorted((REPO / "results" / "examples").rglob("*.json"))[:3]
KERNEL_NOISE = "[   12.345678] virtio_net virtio0 enp0s1: renamed from eth0"


def guest_send(results: Path) -> str:
    """What `guest_convert send` prints in the guest (the real sender, stdout a pipe)."""
    proc = subprocess.run([sys.executable, "-m", "guestkit.lava.guest_convert", "send", str(results)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def guest_results(tmp_path: Path) -> Path:
    root = tmp_path / "guest" / "results"
    for i, src in enumerate(EXAMPLES):
        dest = root / "qemu-arm64-tcg" / f"2026120{i}T000000Z-{src.stem}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    return root


def lava_log(console: str, fmt: str) -> str:
    """Console text as a LAVA log: lava-run's JSON lines, a server's YAML list, or plain."""
    lines = [KERNEL_NOISE, "+ python3 -m guestkit.lava.guest_convert send results", *console.splitlines(),
             KERNEL_NOISE]
    if fmt == "plain":
        return "\n".join(lines) + "\n"
    prefix = "- " if fmt == "yaml" else ""
    entries = [{"dt": "2026-12-01T00:00:00", "lvl": "info", "msg": "start: 3 lava-test-retry"}]
    entries += [{"dt": "2026-12-01T00:00:01", "lvl": "target", "msg": line} for line in lines]
    entries.append({"dt": "2026-12-01T00:00:02", "lvl": "results",
                    "msg": {"case": "vfio.normal.load8", "definition": "0_dmtbench-probe", "result": "pass"}})
    return "".join(f"{prefix}{json.dumps(e)}\n" for e in entries)


@pytest.mark.parametrize("fmt", ["jsonl", "yaml", "plain"])
def test_files_come_back_byte_identical(tmp_path, guest_results, fmt):
    console = guest_send(guest_results)
    log = tmp_path / "job.log"
    log.write_text(lava_log(console, fmt))
    out = tmp_path / "results"
    proc = run_cli("lava", "collect", str(tmp_path), "-r", str(out), module="guestkit")
    assert proc.returncode == 0, proc.stderr
    sent = {line.split()[2]: line.split()[6] for line in console.splitlines() if line.startswith("dmtbench: sent ")
            and "sha256" in line}
    assert len(sent) == len(EXAMPLES)
    for rel, digest in sent.items():
        got = out / rel
        assert got.read_bytes() == (guest_results / rel).read_bytes()
        assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
    assert sorted(proc.stdout.split()) == sorted(str((out / rel).resolve()) for rel in sent)
    if fmt != "plain":
        assert l0_collect.console_lines(log)[1]["pass"] == 1


def test_the_collected_files_are_read_by_bench_compare(tmp_path, guest_results):
    log = tmp_path / "job.log"
    log.write_text(lava_log(guest_send(guest_results), "jsonl"))
    out = tmp_path / "results"
    assert run_cli("lava", "collect", str(log), "-r", str(out), module="guestkit").returncode == 0
    files = sorted((out / "qemu-arm64-tcg").glob("*.json"))
    proc = run_cli("compare", str(files[0]), str(files[0]), "--allow-emulated", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["comparisons"][0]["rows"]
    source = next(p for p in EXAMPLES if p.stem in files[0].name)
    assert len(rows) == len(json.loads(source.read_text())["benchmarks"])
    assert all(row["speedup"] == pytest.approx(1.0) for row in rows)


def test_a_log_without_records(tmp_path):
    log = tmp_path / "job.log"
    log.write_text(lava_log("dmtbench-lava# ls\nbin dmtbench", "jsonl"))
    proc = run_cli("lava", "collect", str(log), "-r", str(tmp_path / "r"), module="guestkit")
    assert_one_line_error(proc, 2, "no dmtbench records")


def test_a_checksum_failure(tmp_path, guest_results):
    console = guest_send(guest_results).splitlines()
    frame = next(i for i, line in enumerate(console) if line.startswith("@@DMT1 "))
    line = console[frame]
    pos = len(line) // 2
    console[frame] = line[:pos] + ("A" if line[pos] != "A" else "B") + line[pos + 1:]  # one character flipped
    log = tmp_path / "job.log"
    log.write_text(lava_log("\n".join(console), "jsonl"))
    out = tmp_path / "results"
    proc = run_cli("lava", "collect", str(log), "-r", str(out), module="guestkit")
    assert_one_line_error(proc, 2, "failed their checksum")
    assert len(list(out.rglob("*.json"))) == len(EXAMPLES) - 1  # the intact ones are kept


def test_a_missing_log(tmp_path):
    proc = run_cli("lava", "collect", str(tmp_path / "nope"), module="guestkit")
    assert_one_line_error(proc, 2, "no such file")
    proc = run_cli("lava", "collect", str(tmp_path), module="guestkit")
    assert_one_line_error(proc, 2, "no job log")


def test_upload_to_an_artifact_store(tmp_path, guest_results):
    """send --upload PUTs every file, byte for byte, to a real HTTP server (here, on localhost)."""
    import http.server
    import threading

    store: dict[str, bytes] = {}

    class Put(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            store[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Put)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/lab/"
        proc = subprocess.run([sys.executable, "-m", "guestkit.lava.guest_convert", "send", str(guest_results),
                               "--upload", url], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    files = sorted(p for p in guest_results.rglob("*.json"))
    assert sorted(store) == sorted(f"/lab/{p.relative_to(guest_results)}" for p in files)
    for p in files:
        assert store[f"/lab/{p.relative_to(guest_results)}"] == p.read_bytes()
    assert proc.stdout.count("upload of ") == len(files) and "failed" not in proc.stdout


def test_a_failed_upload_is_said_not_fatal(guest_results):
    proc = subprocess.run([sys.executable, "-m", "guestkit.lava.guest_convert", "send", str(guest_results),
                           "--upload", "http://127.0.0.1:9/"], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "upload of" in proc.stdout and "failed" in proc.stdout
    assert proc.stdout.count("@@DMT1 ") >= len(EXAMPLES)  # the log still carries every file
