"""In the guest (L1 or L2): guestkit's agent, /init's child (standard library only).

Runs the job's command in /dmtbench, forwards its output to the console (each line tagged
with the stream it came from, so the host can give the command's stdout back byte for byte
and put everything else on stderr), and sends every
new or changed file under /dmtbench/results to the host as a base64 record as soon as it
appears, so a guest that is later killed has already delivered what it measured.  The
agent is the console's only writer once it starts, so records never interleave with
command output.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path("/dmtbench")
RESULTS = ROOT / "results"
FILE, END, EXIT, READY = "@@DMT-FILE", "@@DMT-FILE-END", "@@DMT-EXIT", "@@DMT-READY"
# Output of the command: OUT/ERR + " " + one line; the *N forms carry a last line that had no
# newline.  Untagged console lines (the kernel's) are not the command's.
STREAM_TAGS = {"@@DMT-OUT": ("out", "\n"), "@@DMT-OUTN": ("out", ""),
               "@@DMT-ERR": ("err", "\n"), "@@DMT-ERRN": ("err", "")}
_lock = threading.Lock()


def emit(text: str) -> None:
    with _lock:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def send_file(path: Path) -> None:
    data = path.read_bytes()
    rel = path.relative_to(RESULTS).as_posix()
    body = base64.encodebytes(data).decode()
    digest = hashlib.sha256(data).hexdigest()[:16]
    emit(f"{FILE} {rel} {len(data)} {digest}\n{body}{END}\n")


def scan(sent: dict[Path, tuple[int, int]]) -> None:
    for path in sorted(RESULTS.rglob("*")):
        if not path.is_file():
            continue
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if sent.get(path) != stamp:
            sent[path] = stamp
            send_file(path)


def forward(stream, name: str) -> None:
    """Tag each line of the command's stdout or stderr for the host."""
    for line in iter(stream.readline, ""):
        if line.endswith("\n"):
            emit(f"@@DMT-{name} {line}")
        else:
            emit(f"@@DMT-{name}N {line}")


def main() -> int:
    job = json.loads((ROOT / "job.json").read_text())
    try:
        socket.sethostname(job["machine"])  # results land in results/<machine>/
    except OSError:
        pass
    env = {**os.environ, **job.get("env", {}), "PYTHONPATH": f"{ROOT}:{ROOT}/site:/usr/lib/python3/dist-packages"}
    emit(f"{READY} {time.monotonic():.3f}")
    for cmd in job.get("setup", []):
        subprocess.run(cmd, cwd=ROOT, env=env)
    proc = subprocess.Popen(job["argv"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace")
    readers = [threading.Thread(target=forward, args=(stream, name), daemon=True)
               for stream, name in ((proc.stdout, "OUT"), (proc.stderr, "ERR"))]
    for reader in readers:
        reader.start()
    sent: dict[Path, tuple[int, int]] = {}
    while proc.poll() is None:
        scan(sent)
        time.sleep(0.5)
    for reader in readers:
        reader.join(timeout=5)
    scan(sent)
    emit(f"{EXIT} {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # the host must hear why, not a hung console
        emit(f"{EXIT} 125 agent error: {exc!r}")
