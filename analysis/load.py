"""Result files -> numpy arrays in the reported unit, with their metadata."""
from __future__ import annotations

import dataclasses
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
    """One benchmark of one result file: the values of each worker process (pyperf run)
    in the reported unit.  The process is the unit of replication: values inside one
    process share its mapping, its CPU state and its moment, so they are not independent."""

    name: str            # read-bw[64B,64MiB]@normal
    label: str           # read-bw[64B,64MiB]
    workload: str
    attr: str
    unit: str            # GB/s | ns | M/s
    runs: tuple          # one np.ndarray of values per process, in run order
    rounds: tuple        # the interleaving round of each process (1, 2, ...)
    meta: dict
    source: str          # file it came from

    @property
    def values(self) -> np.ndarray:
        """Every value of every process (for distributions, never for tests)."""
        return np.concatenate(self.runs)

    @property
    def run_medians(self) -> np.ndarray:
        """One summary per process: what the statistics work on."""
        return np.array([np.median(r) for r in self.runs])

    def scaled(self, factor: float) -> "Series":
        """The same series with every value multiplied by factor (planted shifts)."""
        return dataclasses.replace(self, runs=tuple(r * factor for r in self.runs))

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

    @property
    def interleaved(self) -> bool:
        """True when the run's processes took turns across cases (bench run's default)."""
        return self.meta.get("schedule") == "interleaved"

    @property
    def machine(self) -> str:
        return self.meta.get("machine", self.meta.get("hostname", "?"))

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
        done = [r for r in bench.get_runs() if r.values]  # calibration runs have no values
        runs = tuple(np.array([units.convert(unit, v) for v in r.values], dtype=float) for r in done)
        # Files from before interleaving have no 'round': their processes ran in order.
        rounds = tuple(int(r.get_metadata().get("round", k)) for k, r in enumerate(done, 1))
        name = bench.get_name()
        series[name] = Series(name, name.rsplit("@", 1)[0], meta.get("workload", ""), meta.get("attr", ""),
                              unit, runs, rounds, meta, str(path))
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
