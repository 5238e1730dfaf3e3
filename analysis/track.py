"""`track DIR`: has the newest run regressed against the runs before it?

Method (per-process medians, like compare): the baseline is the WINDOW runs (files)
before the newest; each file is summarised by the median of its per-process medians; the
baseline's centre is the median of those summaries and its noise 3 robust standard
deviations of them (1.4826 x MAD).  A benchmark moved when the newest summary differs
from the centre by more than max(THRESHOLD %, noise) AND a t-test of the log of the
newest summary against the logs of the baseline summaries (the file, one `bench run`,
is the unit: runs differ by more than the processes inside one run do) gives a
Holm-adjusted p < ALPHA (Holm across the benchmarks of the newest run).  The band keeps
one wild baseline run from flagging, the threshold a tiny consistent shift.  Exit
status 1 when anything regressed (for nightly gating).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.load import Run, load_many  # noqa: E402
from analysis.tables import Section, Table  # noqa: E402
from bench.errors import UserError  # noqa: E402

WINDOW = 5
THRESHOLD = 3.0
ALPHA = 0.01
MIN_BASELINE = 2
SIGMAS = 3.0  # band half-width in robust standard deviations of the baseline run medians


@dataclass(frozen=True)
class Movement:
    name: str
    unit: str
    center: float
    newest: float
    band: float          # percent: max(threshold, baseline noise)
    p: float             # Holm-adjusted across the newest run's benchmarks
    verdict: str         # regressed | improved | steady
    history: tuple       # (date, median, lo, hi) per run, oldest first
    higher_is_better: bool = True

    @property
    def percent(self) -> float:
        return (self.newest / self.center - 1) * 100


@dataclass(frozen=True)
class TrackResult:
    runs: list[Run]
    movements: list[Movement]
    table: Table

    @property
    def regressions(self) -> list[Movement]:
        return [m for m in self.movements if m.verdict == "regressed"]


def history(directory: Path, allow_emulated: bool) -> list[Run]:
    """Every complete result in DIR, oldest first."""
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory: pass results/<machine>/")
    files = [p for p in sorted(directory.glob("*.json")) if not p.name.endswith("-partial.json")]
    if len(files) < MIN_BASELINE + 1:
        raise UserError(f"{directory} has {len(files)} complete runs; tracking needs at least {MIN_BASELINE + 1}")
    return sorted(load_many(files, allow_emulated), key=lambda r: r.date)


def _summary(s) -> float:
    return float(np.median(s.run_medians))


def _move(name: str, runs: list[Run], window: int, with_history: bool = True) -> Movement | None:
    """The newest run's benchmark against its baseline, before the family adjustment."""
    newest = runs[-1].series[name]
    base = [r.series[name] for r in runs[-1 - window:-1] if name in r.series]
    if len(base) < MIN_BASELINE:
        return None
    summaries = np.array([_summary(s) for s in base])
    center = float(np.median(summaries))
    noise = SIGMAS * 1.4826 * float(np.median(np.abs(summaries - center))) / center * 100
    # The file is the unit: the newest file's summary against the baseline files' (a
    # t-test on logs with the baseline's spread), never its processes against theirs.
    p = stats.p_value([list(s.runs) for s in base], [list(newest.runs)])
    hist = []
    for r in runs if with_history else []:  # CIs for the trend plot: a bootstrap per run
        if name in r.series:
            e = stats.estimate(r.series[name].runs)
            hist.append((r.date, e.median, e.lo, e.hi))
    return Movement(name, newest.unit, center, _summary(newest), noise, p, "steady", tuple(hist),
                    newest.higher_is_better)


def _decide(moves: list[Movement], threshold: float, alpha: float) -> list[Movement]:
    adj = stats.holm([m.p for m in moves])
    out = []
    for m, p in zip(moves, adj):
        band = max(threshold, m.band)
        worse = m.percent < 0 if m.higher_is_better else m.percent > 0
        verdict = ("regressed" if worse else "improved") if abs(m.percent) > band and p < alpha else "steady"
        out.append(dataclasses.replace(m, band=band, p=p, verdict=verdict))
    return out


def track(directory: Path, window: int = WINDOW, threshold: float = THRESHOLD, alpha: float = ALPHA,
          allow_emulated: bool = False) -> TrackResult:
    """Track the results in a directory (see the module docstring for the method)."""
    return track_runs(history(directory, allow_emulated), window, threshold, alpha)


def track_runs(runs: list[Run], window: int = WINDOW, threshold: float = THRESHOLD,
               alpha: float = ALPHA, with_history: bool = True) -> TrackResult:
    """The newest of `runs` (oldest first) against the `window` runs before it."""
    moves = _decide([m for name in runs[-1].series if (m := _move(name, runs, window, with_history))], threshold, alpha)
    rows = [[m.name, f"{m.center:.4g}", f"{m.newest:.4g}", f"{m.percent:+.1f}%", f"{m.band:.1f}%",
             f"{m.p:.3f}", m.verdict] for m in moves if m.verdict != "steady"]
    header = (f"{runs[-1].describe()} | {runs[-1].path.name} vs {min(window, len(runs) - 1)} runs before\n"
              f"file medians; moved: beyond max({threshold:g}%, {SIGMAS:g} rsd) & t-test Holm p<{alpha:g}")
    notes = [f"{sum(m.verdict == 'steady' for m in moves)} of {len(moves)} benchmarks steady"]
    data = {"newest": str(runs[-1].path), "movements": [
        {"name": m.name, "unit": m.unit, "baseline": m.center, "newest": m.newest, "percent": m.percent,
         "band": m.band, "p_adj": m.p, "verdict": m.verdict} for m in moves]}
    table = Table(header, ["benchmark", "baseline", "newest", "change", "band", "p adj", "verdict"],
                  [Section("moved:" if rows else "nothing moved", rows)], notes, data)
    return TrackResult(runs, moves, table)


def plot_trends(result: TrackResult, out: Path) -> list[Path]:
    """One PNG per regressed benchmark: per-run medians with CIs and the baseline band."""
    paths = []
    for m in result.regressions:
        out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.arange(len(m.history))
        med = np.array([h[1] for h in m.history])
        err = [med - [h[2] for h in m.history], [h[3] for h in m.history] - med]
        ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label="run median, 95% CI")
        lo, hi = m.center * (1 - m.band / 100), m.center * (1 + m.band / 100)
        ax.axhspan(lo, hi, color="green", alpha=0.15, label=f"baseline +-{m.band:.1f}%")
        ax.plot([x[-1]], [med[-1]], "rs", markersize=10, label=f"newest: {m.percent:+.1f}% (p={m.p:.3g})")
        ax.set_xticks(x, [h[0][5:16].replace("T", " ") for h in m.history], rotation=30, ha="right", fontsize=7)
        ax.set_xlabel("run start (UTC)")
        ax.set_ylabel(m.unit)
        ax.set_title(f"regression: {m.name}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / (m.name.replace("/", "_").replace("@", "_at_") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
