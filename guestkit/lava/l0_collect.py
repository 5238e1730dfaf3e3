"""L0: `python -m guestkit lava collect LOG_OR_DIR`: the raw result files out of a LAVA job log.

The guest sent each file whole as framed records (guestkit.frames, the agent's framing:
per-line length and crc32, a sha256 per record) among the console text.  A job log is
one of: lava-run's stdout or a LAVA server's log (one `{"dt", "lvl", "msg"}` mapping per
line, with or without YAML's `- `), TuxRun's --log-file-yaml, or a plain console log; a
directory is searched for the log `guestkit lava run` keeps (job.log) or TuxRun's.  Only
the console's lines (lvl `target`) are decoded.  Each file is written byte for byte into
results/<machine>/<file>, as the guest had it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError
from guestkit import frames

LOG_NAMES = ("job.log", "log.yaml", "logs.yaml", "output.yaml", "logs.txt")
CONSOLE_LEVELS = ("target", "feedback")


@dataclass(frozen=True)
class Collected:
    """What one log gave: the files written and the records that did not come whole."""

    log: Path
    written: tuple[Path, ...]
    errors: tuple[str, ...]
    cases: dict[str, int]          # LAVA's verdicts of our test cases: pass / fail / skip counts


def find_log(path: Path) -> Path:
    """The job log: `path` itself, or the known log file inside a directory."""
    if path.is_dir():
        for name in LOG_NAMES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: no job log in it (looked for {', '.join(LOG_NAMES)})")
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    return path


def _entry(line: str) -> dict | None:
    """One LAVA log line as its mapping, or None for a plain console line."""
    text = line.strip()
    text = text.removeprefix("- ")
    if not (text.startswith("{") and '"lvl"' in text):
        return None
    try:
        entry = json.loads(text)
    except ValueError:
        entry = _yaml_line(text)
    return entry if isinstance(entry, dict) and "lvl" in entry else None


def _yaml_line(text: str) -> dict | None:
    """A log line that is YAML but not JSON (LAVA escapes only double quotes)."""
    try:
        import yaml
    except ImportError:
        return None
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError:
        return None


def console_lines(log: Path) -> tuple[list[str], dict[str, int]]:
    """The console text of a log, line by line, and the counts of our cases' results."""
    lines, cases = [], {"pass": 0, "fail": 0, "skip": 0, "unknown": 0}
    with log.open(errors="replace") as f:
        for raw in f:
            entry = _entry(raw)
            if entry is None:
                lines.append(raw.rstrip("\n"))
                continue
            msg = entry.get("msg")
            if entry["lvl"] in CONSOLE_LEVELS and isinstance(msg, str):
                lines.append(msg)
            elif entry["lvl"] == "results" and isinstance(msg, dict) and str(msg.get("definition", "")).endswith(
                    ("dmtbench-probe", "dmtbench-run")):
                result = str(msg.get("result"))
                cases[result if result in cases else "unknown"] += 1
    return lines, cases


def collect(path: Path, results: Path) -> Collected:
    """Decode every file record of the log at `path` into `results`; the intact files are
    written even when others failed (nothing measured is lost)."""
    log = find_log(path)
    lines, cases = console_lines(log)
    decoder = frames.Decoder()
    records: list[frames.Record] = []
    for line in lines:
        records += decoder.feed(line + "\n")
    records += [r for r in decoder.finish() if isinstance(r, frames.Record)]
    written = []
    for rec in records:
        if rec.kind != "file":
            continue
        try:
            written.append(frames.save(results, rec.name, rec.data, "collect"))
        except ValueError:
            raise UserError(f"a record names {rec.name!r}, which is outside results/: the log is not one of ours") from None
    return Collected(log, tuple(written), tuple(decoder.errors), cases)


def main(path: Path, results: Path) -> int:
    """The command: one line per file written; bad input is one line and exit 2."""
    got = collect(path, results)
    for dest in got.written:
        print(dest)
    if got.errors:
        raise UserError(f"{got.log}: {len(got.errors)} record(s) failed their checksum or are incomplete "
                        f"({got.errors[0]}); {len(got.written)} intact file(s) written")
    if not got.written:
        raise UserError(f"{got.log}: no dmtbench records in this log (was it a dmtbench job? its tests send "
                        "results with 'guest_convert send')")
    print(f"collected {len(got.written)} file(s) from {got.log}", file=sys.stderr)
    return 0
