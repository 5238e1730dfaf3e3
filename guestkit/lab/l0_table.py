"""L0: the lab's verdicts (observed vs KVM-policy prediction), its cross-kernel table and timing ratios.

The stage-2 lab's verdicts: each observed outcome against the KVM-policy prediction,
the cross-kernel table (at most 100 columns) and the timing ratios between kernels.

A cell is the effective class the unaligned probes observed for one backing and stage-1
attribute on one host kernel: `device` (an alignment fault inside the guest: stage 1 was
Device), `killed` (KVM killed the VM: a stage-2 alignment fault, i.e. stage 2 was Device
under a Normal stage 1), `normal` (the access completed), `refused` (KVM refused the
memslot: Linux 6.17+ with a cacheable PFNMAP and no FWB), or `?` (no answer).
"""
from __future__ import annotations

from dataclasses import dataclass

from bench import kvmpolicy, memtypes, units
from bench.results import value_of

UNALIGNED = ("load8-unaligned", "store8-unaligned")
ALIGNED = ("load8", "store8")
WIDTH = 100


@dataclass(frozen=True)
class HostReport:
    """What one host kernel's boot gave: its probe outcomes and fast-run medians."""

    kernel: str                       # uname -r of the emulated host
    guest: str                        # payload | linux
    fwb: bool | None
    outcomes: tuple[dict, ...]        # backing, attr, probe, result, code
    medians: dict[str, tuple[float, str]]  # "<backing> <benchmark>" -> (median, unit)
    error: str = ""                   # why this kernel gave nothing (no KVM, timeout...)
    dic: bool | None = None           # CTR_EL0.DIC: with FWB, what 6.17+ needs for cacheable PFNMAP


def predicted(kernel: str, backing: str, attr: str, probe: str, fwb: bool | None,
              dic: bool | None = None) -> str | None:
    """What the architecture and the KVM-policy table say one probe does, or None where
    they fix nothing a probe can see (ordering, DC ZVA under QEMU, exclusives)."""
    pred = kvmpolicy.predict(kernel, backing, fwb, dic)
    if pred.refused:
        return "refused"  # no memslot: every probe of the backing
    if probe in ALIGNED:
        return "ok"
    if probe not in UNALIGNED:
        return None
    if memtypes.get(attr).device:
        return "fault"  # stage 1 Device: the guest takes the alignment fault itself
    return "killed" if memtypes.combine(attr, pred.stage2, bool(fwb)).device else "ok"


def cell_of(results: list[str | None]) -> str:
    """The class of a (backing, attr) from its unaligned probes' results."""
    if "refused" in results:
        return "refused"
    if "killed" in results:
        return "killed"
    if "fault" in results:
        return "device"
    return "normal" if results and all(r == "ok" for r in results) else "?"


def with_predictions(report: HostReport) -> list[dict]:
    """The JSON outcomes: every probe result with host kernel, guest mode and prediction."""
    return [{"host_kernel": report.kernel, "guest": report.guest, **o,
             "predicted": predicted(report.kernel, o["backing"], o["attr"], o["probe"], report.fwb, report.dic)}
            for o in report.outcomes]


def cells(report: HostReport) -> dict[tuple[str, str], tuple[str, str]]:
    """(backing, attr) -> (observed cell, predicted cell)."""
    by_case: dict[tuple[str, str], list[dict]] = {}
    for o in with_predictions(report):
        if o["probe"] in UNALIGNED:
            by_case.setdefault((o["backing"], o["attr"]), []).append(o)
    return {case: (cell_of([o["result"] for o in rows]), cell_of([o["predicted"] for o in rows]))
            for case, rows in by_case.items()}


def mismatches(reports: list[HostReport]) -> list[str]:
    """Every cell whose observation disagrees with the policy table, in words."""
    out = []
    for r in reports:
        for (backing, attr), (seen, want) in sorted(cells(r).items()):
            if seen != want:
                out.append(f"{r.kernel} {r.guest} {backing} {attr}: observed {seen}, KVM policy predicts {want}")
    return out


def table(reports: list[HostReport]) -> str:
    """Rows backing x stage-1 attribute, one column per host kernel; '!' marks a cell that
    disagrees with the prediction (the predicted class follows it)."""
    per = [cells(r) for r in reports]
    order = [*kvmpolicy.BACKINGS, *sorted({c[0] for p in per for c in p} - set(kvmpolicy.BACKINGS))]
    rows = sorted({case for c in per for case in c}, key=lambda c: (order.index(c[0]), memtypes.names().index(c[1])))
    bw = max([7, *(len(b) for b, _ in rows)])  # kmod-device-ngnre is 17 wide
    col = max(14, *(len(short(r.kernel)) + 1 for r in reports)) if reports else 14
    col = min(col, (WIDTH - bw - 21) // max(1, len(reports)))
    head = f"{'backing':<{bw}} {'stage-1 attr':<19}" + "".join(f" {short(r.kernel)[:col - 1]:>{col - 1}}"
                                                                 for r in reports)
    lines = [head]
    for backing, attr in rows:
        line = f"{backing:<{bw}} {attr:<19}"
        for c in per:
            seen, want = c.get((backing, attr), ("-", "-"))
            text = seen if seen == want else f"{seen}!{want}"
            line += f" {text[:col - 1]:>{col - 1}}"
        lines.append(line)
    errors = [f"{r.kernel}: {r.error}" for r in reports if r.error]
    legend = ("cell = effective class seen by unaligned 8-byte probes under each stage-1 attribute: device = "
              "fault in the guest, killed = KVM killed the VM (stage-2 Device), normal = completed, refused = KVM "
              "refused the memslot; "
              "x!y = observed x, KVM policy predicts y")
    return "\n".join([*lines, *_wrap(legend), *errors])


def short(kernel: str) -> str:
    """A kernel release without its flavour, for column heads: 6.12.117+deb12-arm64 -> 6.12.117+deb12."""
    return kernel.removesuffix("-arm64")


def _wrap(text: str) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > WIDTH:
            lines.append(line)
            line = ""
        line = f"{line} {w}".strip()
    return [*lines, line] if line else lines


def ratios(reports: list[HostReport]) -> str:
    """Per case, the first kernel's median and each other kernel's ratio to it, > 1 =
    better (speed-up for rates, inverse for latencies).  Emulated: plumbing, not hardware."""
    base = reports[0] if reports else None
    if base is None or not base.medians or len(reports) < 2:
        return ""
    name, col = 46, 13
    head = f"{'case (emulated timings)':<{name}}{short(base.kernel)[:col - 1]:>{col + 2}}"
    lines = [head + "".join(f"{short(r.kernel)[:col - 1]:>{col}}" for r in reports[1:])]
    for case, (value, unit) in sorted(base.medians.items(), key=lambda kv: _case_order(kv[0])):
        line = f"{case[:name - 1]:<{name}}{value:>9.4g} {unit:<5}"
        for r in reports[1:]:
            other = r.medians.get(case)
            speed = (other[0] / value if units.higher_is_better(unit) else value / other[0]) if other and value else None
            line += f"{(f'{speed:.2f}x' if speed else '-'):>{col}}"
        lines.append(line)
    lines.append(f"x = median relative to {base.kernel}, > 1 = better (rates up, latencies down)")
    return "\n".join(lines)


def _case_order(case: str) -> tuple:
    backing, _, bench = case.partition(" ")
    workload, _, attr = bench.partition("@")
    known = [*kvmpolicy.BACKINGS]
    return (known.index(backing) if backing in known else len(known), workload,
            memtypes.names().index(attr) if attr in memtypes.names() else 99)


def medians_of(suite_benchmarks, backing: str) -> dict[str, tuple[float, str]]:
    """'<backing> <benchmark>' -> (median in its unit, unit) from a pyperf suite, the way
    every dmtbench summary takes it (bench.results.value_of: median of process medians)."""
    out = {}
    for bench in suite_benchmarks:
        median, _, unit = value_of(bench)
        out[f"{backing} {bench.get_name()}"] = (median, unit)
    return out
