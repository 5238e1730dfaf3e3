"""In the guest (L1 or L2): guestkit's agent, /init's child (standard library only).

Runs the job's command in /dmtbench, forwards its output to the console as records (one per
line of its stdout or stderr, so the host can give the command's stdout back byte for byte
and put everything else on stderr), and sends every new or changed file under
/dmtbench/results to the host as a record as soon as it appears, so a guest that is later
killed has already delivered what it measured.  The records are framed by guestkit.frames:
the kernel prints on the same console, and a record it cuts into is mended by the host or
sent again (the sender watches /dev/kmsg).  The agent drains the console before it exits,
and /init powers off only then, so the power-off message cannot land in the last record.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (/init): /dmtbench is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guestkit import frames

ROOT = Path("/dmtbench")
RESULTS = ROOT / "results"
_lock = threading.Lock()
_sender: frames.Sender | None = None


def send(kind: str, name: str, data: bytes) -> None:
    """One record on the console; records from the threads never interleave."""
    global _sender
    with _lock:
        if _sender is None:
            _sender = frames.Sender(sys.stdout, frames.KmsgWatch.open())
        _sender.send(kind, name, data)


def send_file(path: Path) -> None:
    send("file", path.relative_to(RESULTS).as_posix(), path.read_bytes())


def scan(sent: dict[Path, tuple[int, int]]) -> None:
    for path in sorted(RESULTS.rglob("*")):
        if not path.is_file():
            continue
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if sent.get(path) != stamp:
            sent[path] = stamp
            send_file(path)


def forward(stream, kind: str) -> None:
    """Each line of the command's stdout or stderr (out / err) as a record of its own,
    line end included (a last line without one comes back without one)."""
    for line in iter(stream.readline, ""):
        send(kind, "", line.encode())


def main() -> int:
    job = json.loads((ROOT / "job.json").read_text())
    try:
        socket.sethostname(job["machine"])  # results land in results/<machine>/
    except OSError:
        pass
    env = {**os.environ, **job.get("env", {}), "PYTHONPATH": f"{ROOT}:{ROOT}/site:/usr/lib/python3/dist-packages"}
    send("ready", "", f"{time.monotonic():.3f}".encode())
    for cmd in job.get("setup", []):
        subprocess.run(cmd, cwd=ROOT, env=env)
    proc = subprocess.Popen(job["argv"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace")
    readers = [threading.Thread(target=forward, args=(stream, name), daemon=True)
               for stream, name in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for reader in readers:
        reader.start()
    sent: dict[Path, tuple[int, int]] = {}
    while proc.poll() is None:
        scan(sent)
        time.sleep(0.5)
    for reader in readers:
        reader.join(timeout=5)
    scan(sent)
    if note := report():
        send("err", "", (note + "\n").encode())
    send("exit", str(proc.returncode), b"")
    return proc.returncode


def report() -> str:
    """What the sender had to do, for the console (stderr record) when it resent anything."""
    if _sender is None or not (_sender.resent or _sender.gave_up):
        return ""
    return (f"guestkit agent: the kernel printed while records were sent: {_sender.resent} batch(es) resent, "
            f"{_sender.gave_up} still disturbed after {frames.Sender.RETRIES} resends")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # the host must hear why, not a hung console
        send("exit", "125", f"agent error: {exc!r}".encode())
    frames.tty_drain(sys.stdout)  # all of it on the wire before /init powers off
