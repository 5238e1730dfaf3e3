"""L0: `python -m guestkit lava run JOB`: a job of kind (a) or (b) through the local dispatcher or TuxRun.

lava-run runs a job standalone (as root, no server, no worker) with the device dictionary
`lava job` wrote beside it.  The job is validated first: a job LAVA rejects is one line
with LAVA's own message.  The log (lava-run's stdout) is kept as OUT/job.log and the raw
results in it are collected into results/ (guestkit.lava.l0_collect).  `--tuxrun` runs
the same job through TuxRun (`--device qemu-lava --job-definition`, `--runtime null`:
the podman runtime needs an image that cannot be pulled here), whose qemu template takes
the job's context; TuxRun's own YAML log is collected the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from guestkit.lava import l0_collect

DEPS = "python -m guestkit deps --lava"


@dataclass(frozen=True)
class RunResult:
    """One job's run: LAVA's verdict, the files collected, how long it took."""

    passed: bool
    error: str                     # LAVA's error message when the job failed
    collected: l0_collect.Collected | None
    seconds: float
    log: Path


def job_files(path: Path) -> tuple[Path, Path]:
    """(job.yaml, device.yaml) from a job directory or a job file with device.yaml beside it."""
    job = path / "job.yaml" if path.is_dir() else path
    device = job.parent / "device.yaml"
    if not job.is_file():
        raise UserError(f"{path}: no LAVA job there (write one with 'python -m guestkit lava job')")
    if not device.is_file():
        raise UserError(f"{device}: no device dictionary beside the job (python -m guestkit lava job writes one)")
    return job, device


def lava_run() -> str:
    """The dispatcher's lava-run, or a one-line error saying how to install it."""
    tool = shutil.which("lava-run")
    if not tool:
        raise UserError(f"LAVA's dispatcher (lava-run) is not installed: run '{DEPS}'")
    return tool


def log_entries(text: str) -> list[dict]:
    """The mappings of a lava-run log (one per line)."""
    out = []
    for line in text.splitlines():
        entry = l0_collect._entry(line)
        if entry is not None:
            out.append(entry)
    return out


def job_error(entries: list[dict]) -> str:
    """LAVA's own reason a job failed (or was rejected), in one line."""
    for e in entries:
        msg = e.get("msg")
        if e.get("lvl") == "results" and isinstance(msg, dict) and msg.get("case") == "job" and msg.get("error_msg"):
            return " ".join(str(msg["error_msg"]).split())
    for e in reversed(entries):
        if e.get("lvl") in ("error", "exception") and isinstance(e.get("msg"), str):
            return " ".join(e["msg"].split())
    return "LAVA gave no reason"


def rejected(entries: list[dict]) -> bool:
    """Whether the job failed in LAVA's validation stage (nothing was deployed or booted)."""
    return not any(e.get("lvl") == "info" and isinstance(e.get("msg"), str) and e["msg"].startswith("start: 1 ")
                   for e in entries)


def job_passed(entries: list[dict]) -> bool:
    return any(e.get("lvl") == "results" and isinstance(e.get("msg"), dict) and e["msg"].get("case") == "job"
               and e["msg"].get("result") == "pass" for e in entries)


def validate(job: Path, device: Path, out: Path) -> None:
    """lava-run --validate: a job LAVA rejects is a one-line error (exit 2) with its message."""
    tool = lava_run()
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([tool, "--validate", "--job-id", job_id(), "--device", str(device), "--output-dir",
                           str(out / "validate"), str(job)], capture_output=True, text=True, check=False)
    entries = log_entries(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not job_passed(entries):
        why = job_error(entries) if entries else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"LAVA rejected {job}: {why}")


def job_id() -> str:
    """A job id no other local run uses now (lava-run keeps its files under tmp/<id>/)."""
    return str(os.getpid() * 1000 + int(time.monotonic() * 1000) % 1000)


def run(path: Path, out: Path, results: Path, tuxrun: bool = False, verbose: bool = False) -> RunResult:
    """Validate, run and collect one job; LAVA's verdict is in the result (no exception
    for a job that ran and failed: what it sent home is still collected)."""
    job, device = job_files(path)
    if tuxrun:
        validate(job, device, out)  # TuxRun's own messages about a rejected job are not LAVA's
    else:
        lava_run()  # the dispatcher validates the job itself as its first stage
    t0 = time.monotonic()
    log = _tuxrun(job, out, verbose) if tuxrun else _lava_run(job, device, out, verbose)
    seconds = time.monotonic() - t0
    entries = log_entries(log.read_text(errors="replace"))
    passed = job_passed(entries)
    if not passed and rejected(entries):
        raise UserError(f"LAVA rejected {job}: {job_error(entries)}")
    try:
        collected = l0_collect.collect(log, results)
    except UserError:
        collected = None
    return RunResult(passed, "" if passed else job_error(entries), collected, seconds, log)


def _lava_run(job: Path, device: Path, out: Path, verbose: bool) -> Path:
    log = out / "job.log"
    argv = [lava_run(), "--job-id", job_id(), "--device", str(device), "--output-dir", str(out / "lava"), str(job)]
    with log.open("w") as f:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout:
            f.write(line)
            if verbose:
                sys.stderr.write(_shown(line))
        proc.wait()
    return log


def _tuxrun(job: Path, out: Path, verbose: bool) -> Path:
    try:
        import tuxrun  # noqa: F401  installed by deps --lava
    except ImportError:
        raise UserError(f"TuxRun is not installed: run '{DEPS}'") from None
    out = out.resolve()
    log = out / "log.yaml"
    argv = [sys.executable, "-m", "tuxrun", "--runtime", "null", "--device", "qemu-lava",
            "--job-definition", job.resolve().as_uri(), "--log-file-yaml", str(log),
            "--results", str(out / "results.json"), "--cache-dir", str(out / "tuxrun-cache")]
    # TuxRun gives lava-run `--output-dir output`, relative: run it in `out`, not in the
    # user's directory (which would get an output/ folder).
    proc = subprocess.run(argv, capture_output=not verbose, text=True, check=False, cwd=out)
    if not log.exists():
        tail = ((proc.stderr or "").strip().splitlines() or ["no output"])[-1]
        raise UserError(f"TuxRun wrote no log (exit {proc.returncode}): {tail}")
    return log


def _shown(line: str) -> str:
    """A log line as a user reads it with -v: the console's text, LAVA's messages."""
    entry = l0_collect._entry(line)
    if entry is None:
        return line
    msg = entry.get("msg")
    return f"{msg}\n" if isinstance(msg, str) else f"{json.dumps(msg)}\n"
