"""Result files -> numpy arrays in the reported unit, with their metadata."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyperf

from bench import units
from bench.errors import UserError


@dataclass(frozen=True)
class Series:
    """One benchmark of one run: every value in the reported unit."""

    name: str            # read-bw[64B,64MiB]@normal
    label: str           # read-bw[64B,64MiB]
    workload: str
    attr: str
    unit: str            # GB/s | ns | M/s
    values: np.ndarray
    meta: dict
    source: str          # file it came from

    @property
    def higher_is_better(self) -> bool:
        return units.higher_is_better(self.unit)

    @property
    def size(self) -> int:
        return int(self.meta.get("size", 0))


@dataclass(frozen=True)
class Run:
    """One result file."""

    path: Path
    series: dict[str, Series]
    meta: dict            # metadata common to every benchmark (pyperf suite metadata)
    date: str             # ISO start date of the first value

    @property
    def emulated(self) -> bool:
        return self.meta.get("emulated") == "true"

    def describe(self) -> str:
        return f"{self.meta.get('machine', self.meta.get('hostname', '?'))} {self.meta.get('kernel_release', '?')}"


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc.__class__.__name__}); is it a dmtbench result?") from None


def load(path: Path) -> Run:
    """Read one pyperf suite written by `python -m bench run`."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except ValueError:
        raise UserError(f"{path}: corrupt JSON; is it a complete dmtbench result?") from None
    if not isinstance(data, dict) or "benchmarks" not in data or "version" not in data:
        raise UserError(f"{path}: not a pyperf benchmark suite (no 'benchmarks'/'version'); pass files from results/")
    try:
        suite = pyperf.BenchmarkSuite.loads(text)
    except Exception as exc:  # pyperf raises ValueError/KeyError/TypeError on malformed suites
        raise UserError(f"{path}: malformed pyperf suite ({exc})") from None
    series = {}
    for bench in suite.get_benchmarks():
        meta = bench.get_metadata()
        if "report_unit" not in meta or not bench.get_values():
            raise UserError(f"{path}: benchmark {bench.get_name()!r} was not written by dmtbench (no report_unit)")
        unit = meta["report_unit"]
        vals = np.array([units.convert(unit, v) for v in bench.get_values()], dtype=float)
        name = bench.get_name()
        series[name] = Series(name, name.rsplit("@", 1)[0], meta.get("workload", ""), meta.get("attr", ""),
                              unit, vals, meta, str(path))
    dates = suite.get_dates()
    return Run(path, series, suite.get_metadata(), dates[0].isoformat() if dates else "")


def load_many(paths: list[Path], allow_emulated: bool = False) -> list[Run]:
    """Load files and refuse a mix of emulated and hardware results."""
    runs = [load(Path(p)) for p in paths]
    kinds = {r.emulated for r in runs}
    if len(kinds) > 1 and not allow_emulated:
        emu = [r.path.name for r in runs if r.emulated]
        raise UserError(f"mixing emulated (TCG) and hardware results ({', '.join(emu)} emulated): "
                        "their timings are not comparable; pass --allow-emulated to do it anyway")
    return runs
