"""L0: the lab's verdicts (three sources per backing), its tables (main, --detail) and timing ratios.

Three sources stand side by side for every (host kernel, backing):
  prediction  bench.kvmpolicy: what that kernel's KVM is expected to choose
  read        the leaf stage-2 descriptor KVM wrote (`stage2_read` in each kvm-target
              outcome: a canonical attribute name, or `unavailable: <reason>`)
  probe       the class the unaligned probes show under a Normal stage 1: the VM killed
              (a stage-2 alignment fault: stage 2 Device), the access completed (stage 2
              Normal), or KVM refused the memslot
The read is compared exactly with the prediction and by class (Device / Normal) with the
probe; the per-attribute probe outcomes are still checked against the prediction as
before.  Any disagreement is a MISMATCH line (and `guestkit lab` exits non-zero).

The main table is backing x host kernel, each cell the stage-2 attribute read in short
form (Dev-nGnRE, NC, WB, ...), `*` where the probe class or the prediction disagrees.
The --detail table is backing x stage-1 attribute x host kernel: the effective type
memtypes.combine(stage 1, stage-2 read, FWB) and what the unaligned probes did; a
stage-1 Device row shows `s1-fault`: the Arm ARM checks alignment against the stage-1
type first, so those rows carry no stage-2 information.  Text stays within WIDTH columns.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from bench import kvmpolicy, memtypes, units
from bench.errors import UserError
from bench.plan import split_name
from bench.results import value_of

UNALIGNED = ("load8-unaligned", "store8-unaligned")  # what the tests name; every "-unaligned" probe counts
ALIGNED = ("load8", "store8")
WIDTH = 100
NOT_RECORDED = "unavailable: not recorded"  # a result from before the descriptor read
SHORT = {"device-ngnrne": "Dev-nGnRnE", "device-ngnre": "Dev-nGnRE", "device-ngre": "Dev-nGRE",
         "device-gre": "Dev-GRE", "normal-nc": "NC", "normal-wt": "WT", "normal": "WB", "as-s1": "as-s1"}
MARK = "*"
# What the probe class looks like as the unaligned probes' result (main table legend, plot).
PROBE_WORD = {"device": "killed", "normal": "ok", "refused": "refused", "mixed": "mixed", "?": "?", "-": "-"}


@dataclass(frozen=True)
class HostReport:
    """What one host kernel's boot gave: its probe outcomes and fast-run medians."""

    kernel: str                       # uname -r of the emulated host
    guest: str                        # payload | linux
    fwb: bool | None
    outcomes: tuple[dict, ...]        # backing, attr, probe, result, code (+ stage2_read, ... when recorded)
    medians: dict[str, tuple[float, str]]  # "<backing> <benchmark>" -> (median, unit)
    error: str = ""                   # why this kernel gave nothing (no KVM, timeout...)
    dic: bool | None = None           # CTR_EL0.DIC: with FWB, what 6.17+ needs for cacheable PFNMAP
    backings: dict[str, dict] = field(default_factory=dict)  # backing -> the probe run's facts (or error)


def is_unaligned(probe: str) -> bool:
    return probe.endswith("-unaligned")


def predicted(kernel: str, backing: str, attr: str, probe: str, fwb: bool | None,
              dic: bool | None = None) -> str | None:
    """What the architecture and the KVM-policy table say one probe does, or None where
    they fix nothing a probe can see (ordering, DC ZVA under QEMU, exclusives)."""
    pred = kvmpolicy.predict(kernel, backing, fwb, dic)
    if pred.refused:
        return "refused"  # no memslot: every probe of the backing
    if probe in ALIGNED:
        return "ok"
    if not is_unaligned(probe):
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


# --- the stage-2 read -----------------------------------------------------------------------

def short(name: str) -> str:
    """An attribute in the table's short form (device-ngnre -> Dev-nGnRE); a kernel release
    without its flavour for column heads (6.12.117+deb12-arm64 -> 6.12.117+deb12)."""
    return SHORT.get(name, name.removesuffix("-arm64"))


def read_of(outcome: dict) -> str:
    """The stage-2 attribute read for one outcome: a canonical name or 'unavailable: ...'."""
    return outcome.get("stage2_read") or NOT_RECORDED


def available(read: str) -> bool:
    return not read.startswith("unavailable")


def _flag(value) -> bool | None:
    """true/false in either spelling (JSON bool or the metadata's 'true'/'false')."""
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(str(value).lower()) if value is not None else None


def effective_of(attr: str, read: str, fwb: bool | None) -> str | None:
    """memtypes.combine(stage 1, the stage-2 read, FWB), or None without a usable read."""
    if not available(read):
        return None
    try:
        return memtypes.combine(attr, read, bool(fwb)).effective
    except UserError:  # a read the host's FWB state cannot encode: shown as n/a, caught by the verdict
        return None


@dataclass(frozen=True)
class Stage2Verdict:
    """One (host kernel, backing): the three sources and what disagrees among them."""

    kernel: str
    guest: str
    backing: str
    read: str                  # canonical name or 'unavailable: <reason>'
    memattr: int | None        # raw MemAttr[3:0] of the leaf
    leaf: int | None           # bytes the leaf maps
    fwb: bool | None           # FWB in force when the descriptor was decoded
    predicted: str             # kvmpolicy's stage 2, or 'refused'
    reason: str                # why kvmpolicy predicts it
    probe_class: str           # device | normal | refused | mixed | ? (no answer) | - (not probed)
    mismatches: tuple[str, ...]

    @property
    def read_class(self) -> str:
        if not available(self.read):
            return "refused" if self.probe_class == "refused" else "-"
        try:
            return "device" if memtypes.get(self.read).device else "normal"
        except UserError:
            return "?"

    @property
    def cell(self) -> str:
        """The main table's cell: the read in short form, `refused`, or `n/a`."""
        if available(self.read):
            return short(self.read)
        return "refused" if self.probe_class == "refused" else "n/a"

    def to_dict(self) -> dict:
        """The --json record, named as the outcomes name the same facts."""
        return {"host_kernel": self.kernel, "guest": self.guest, "backing": self.backing, "stage2_read": self.read,
                "stage2_memattr": self.memattr, "stage2_leaf": self.leaf, "fwb": self.fwb, "cell": self.cell,
                "predicted": self.predicted, "predicted_reason": self.reason, "probe_class": self.probe_class,
                "read_class": self.read_class, "agrees": not self.mismatches, "mismatches": list(self.mismatches)}


def backings_of(report: HostReport) -> list[str]:
    """The backings a host reported, in bench.kvmpolicy's order, then any others."""
    seen = list(dict.fromkeys([*(o["backing"] for o in report.outcomes), *report.backings]))
    known = [b for b in kvmpolicy.BACKINGS if b in seen]
    return known + [b for b in seen if b not in known]


def probe_class(rows: list[dict]) -> str:
    """The stage-2 class the unaligned probes under a Normal stage 1 show."""
    results = [o["result"] for o in rows if is_unaligned(o["probe"]) and not memtypes.get(o["attr"]).device]
    if not results:
        return "refused" if rows and all(o["result"] == "refused" for o in rows) else "-"
    if "refused" in results:
        return "refused"
    if "killed" in results and "ok" in results:
        return "mixed"
    if "killed" in results:
        return "device"
    return "normal" if all(r == "ok" for r in results) else "?"


def _read(rows: list[dict], facts: dict) -> tuple[str, dict, list[str]]:
    """The backing's read (the one its VMs agree on), the outcome that carries it, and a
    mismatch line when VMs over the same backing read different attributes."""
    reads = Counter(read_of(o) for o in rows if available(read_of(o)))
    if not reads:
        why = Counter(read_of(o) for o in rows).most_common(1)
        fallback = facts.get("stage2_read") or (why[0][0] if why else NOT_RECORDED)
        return fallback, facts if fallback == facts.get("stage2_read") else {}, []
    read = reads.most_common(1)[0][0]
    carrier = next(o for o in rows if read_of(o) == read)
    odd = [f"VMs over one backing read different stage-2 attributes: {dict(reads)}"] if len(reads) > 1 else []
    return read, carrier, odd


def stage2_verdict(report: HostReport, backing: str) -> Stage2Verdict:
    """The three sources for one backing of one host, compared."""
    rows = [o for o in report.outcomes if o["backing"] == backing]
    facts = report.backings.get(backing, {})
    read, carrier, bad = _read(rows, facts)
    pred = kvmpolicy.predict(report.kernel, backing, report.fwb, report.dic)
    fwb = _flag(carrier.get("fwb"))
    verdict = Stage2Verdict(report.kernel, report.guest, backing, read, carrier.get("stage2_memattr"),
                            carrier.get("stage2_leaf"), report.fwb if fwb is None else fwb, pred.shown, pred.reason,
                            probe_class(rows), ())
    if available(read) and read != pred.shown:
        bad.append(f"stage-2 read {read}, KVM policy predicts {pred.shown}")
    cls = verdict.read_class
    if available(read) and verdict.probe_class not in ("-", cls):
        bad.append(f"stage-2 read {read} ({cls}), the unaligned probes see {PROBE_WORD[verdict.probe_class]} "
                   f"({verdict.probe_class})")
    if fwb is not None and report.fwb is not None and fwb != report.fwb:
        bad.append(f"descriptor decoded with FWB {fwb}, the host reports FWB {report.fwb}")
    return replace(verdict, mismatches=tuple(bad))


def stage2_verdicts(report: HostReport) -> list[Stage2Verdict]:
    """Every backing of one host; none for a host that gave nothing."""
    return [stage2_verdict(report, b) for b in backings_of(report)]


# --- per stage-1 attribute (the --detail matrix) ----------------------------------------------

def with_predictions(report: HostReport) -> list[dict]:
    """The JSON outcomes: every probe result with host kernel, guest mode, prediction, the
    stage-2 read (or why not) and the effective type combine(stage 1, read, FWB)."""
    out = []
    for o in report.outcomes:
        read = read_of(o)
        fwb = _flag(o.get("fwb"))
        fwb = report.fwb if fwb is None else fwb
        out.append({"host_kernel": report.kernel, "guest": report.guest, **o,
                    "predicted": predicted(report.kernel, o["backing"], o["attr"], o["probe"], report.fwb, report.dic),
                    "stage2_read": read, "stage2_memattr": o.get("stage2_memattr"),
                    "stage2_leaf": o.get("stage2_leaf"), "fwb": fwb, "effective": effective_of(o["attr"], read, fwb),
                    "stage1_fault": memtypes.get(o["attr"]).device and is_unaligned(o["probe"])})
    return out


def cells(report: HostReport) -> dict[tuple[str, str], tuple[str, str]]:
    """(backing, attr) -> (observed cell, predicted cell)."""
    by_case: dict[tuple[str, str], list[dict]] = {}
    for o in with_predictions(report):
        if is_unaligned(o["probe"]):
            by_case.setdefault((o["backing"], o["attr"]), []).append(o)
    return {case: (cell_of([o["result"] for o in rows]), cell_of([o["predicted"] for o in rows]))
            for case, rows in by_case.items()}


def detail_rows(report: HostReport) -> list[dict]:
    """The --detail matrix of one host as records: (backing, stage-1 attr) with the
    effective type from the read, what the unaligned probes did and what was predicted."""
    reads = {v.backing: v for v in stage2_verdicts(report)}
    out = []
    for (backing, attr), (seen, want) in cells(report).items():
        v = reads.get(backing)
        s1_fault = memtypes.get(attr).device
        out.append({"host_kernel": report.kernel, "guest": report.guest, "backing": backing, "attr": attr,
                    "effective": effective_of(attr, v.read, v.fwb) if v else None, "observed": seen,
                    "predicted": want, "stage1_fault": s1_fault,
                    "note": "stage-1 Device: the alignment fault is taken at stage 1, no stage-2 information"
                    if s1_fault else ""})
    return out


def mismatches(reports: list[HostReport]) -> list[str]:
    """Every disagreement in words: per stage-1 attribute, probe vs prediction; per backing,
    the read vs the prediction (exact) and vs the probe class."""
    out = []
    for r in reports:
        for (backing, attr), (seen, want) in sorted(cells(r).items()):
            if seen != want:
                out.append(f"{r.kernel} {r.guest} {backing} {attr}: observed {seen}, KVM policy predicts {want}")
        for v in stage2_verdicts(r):
            out += [f"{r.kernel} {r.guest} {v.backing}: {m}" for m in v.mismatches]
    return out


def unread(reports: list[HostReport]) -> list[str]:
    """Backings with no stage-2 read (and not refused), with the reason: notes, not mismatches."""
    return [f"{r.kernel} {v.backing}: stage2_read: {v.read}" for r in reports for v in stage2_verdicts(r)
            if v.cell == "n/a"]


# --- text ---------------------------------------------------------------------------------------

def disagrees(report: HostReport, backing: str) -> bool:
    """Whether any source disagrees for this backing of this host (the table's mark)."""
    if stage2_verdict(report, backing).mismatches:
        return True
    return any(seen != want for (b, _), (seen, want) in cells(report).items() if b == backing)


def table(reports: list[HostReport]) -> str:
    """The main table: rows backing, one column per host kernel, each cell the stage-2
    attribute read; `*` marks a cell the probe class or the prediction disagrees with."""
    per = [{v.backing: v for v in stage2_verdicts(r)} for r in reports]
    rows = list(dict.fromkeys(b for r in reports for b in backings_of(r)))
    bw = max([7, *(len(b) for b in rows)])
    col = min(max([12, *(len(short(r.kernel)) + 1 for r in reports)]), (WIDTH - bw) // max(1, len(reports)))
    lines = [f"{'backing':<{bw}}" + "".join(f"{short(r.kernel)[:col - 1]:>{col}}" for r in reports)]
    for backing in rows:
        line = f"{backing:<{bw}}"
        for r, p in zip(reports, per):
            v = p.get(backing)
            text = "-" if v is None else v.cell + (MARK if disagrees(r, backing) else "")
            line += f"{text[:col - 1]:>{col}}"
        lines.append(line)
    legend = ("cell = the stage-2 attribute KVM wrote in the leaf descriptor (Dev-nGnRE = Device-nGnRE, "
              "NC = Normal-NC, WB = Normal write-back, WT = write-through, as-s1 = FWB 'use stage 1'), "
              "refused = KVM refused the memslot, n/a = no read (reason below); "
              f"{MARK} = the unaligned probes or the KVM-policy prediction disagree (MISMATCH lines); "
              "--detail: per stage-1 attribute")
    notes = [f"n/a: {line}" for line in unread(reports)]
    errors = [f"{r.kernel}: {r.error}" for r in reports if r.error]
    return "\n".join([*lines, *_wrap(legend), *(n[:WIDTH] for n in notes), *errors])


def detail(reports: list[HostReport]) -> str:
    """Rows backing x stage-1 attribute, one column per host kernel: the effective type
    (combine(stage 1, read, FWB)) and what the unaligned probes did; `!` where that
    disagrees with the prediction."""
    per = [{(d["backing"], d["attr"]): d for d in detail_rows(r)} for r in reports]
    order = list(dict.fromkeys(b for r in reports for b in backings_of(r)))
    rows = sorted({case for p in per for case in p}, key=lambda c: (order.index(c[0]), memtypes.names().index(c[1])))
    bw = max([7, *(len(b) for b, _ in rows)])
    col = min(max([21, *(len(short(r.kernel)) + 1 for r in reports)]), (WIDTH - bw - 14) // max(1, len(reports)))
    lines = [f"{'backing':<{bw}} {'stage-1 attr':<13}" + "".join(f"{short(r.kernel)[:col - 1]:>{col}}"
                                                              for r in reports)]
    for backing, attr in rows:
        line = f"{backing:<{bw}} {attr:<13}"
        for p in per:
            d = p.get((backing, attr))
            line += f"{(_detail_cell(d) if d else '-')[:col - 1]:>{col}}"
        lines.append(line)
    legend = ("cell = effective type combine(stage 1, stage-2 read, FWB) and what the unaligned probes did: "
              "s1-fault = alignment fault in the guest at stage 1 (a stage-1 Device row: the Arm ARM checks "
              "alignment against the stage-1 type first, so it says nothing about stage 2), killed = KVM killed "
              "the VM (a stage-2 alignment fault: stage 2 Device), ok = completed, refused = no memslot, "
              "n/a = no stage-2 read; ! = differs from the KVM-policy prediction")
    return "\n".join([*lines, *_wrap(legend)])


def _detail_cell(d: dict) -> str:
    word = {"device": "s1-fault", "normal": "ok"}.get(d["observed"], d["observed"])
    eff = short(d["effective"]) if d["effective"] else "n/a"
    text = word if word == "refused" else f"{eff} {word}"
    return text + ("!" if d["observed"] != d["predicted"] else "")


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


def medians_of(suite_benchmarks, backing: str | None) -> dict[str, tuple[float, str]]:
    """'<backing> <benchmark>' -> (median in its unit, unit) from a pyperf suite, the way
    every dmtbench summary takes it (bench.results.value_of: median of process medians).
    backing None: the interleaved file of every backing (l1_fast), each benchmark's own
    `backing` metadata, its name without the target part."""
    out = {}
    for bench in suite_benchmarks:
        median, _, unit = value_of(bench)
        name, which = bench.get_name(), backing
        if which is None:
            label, _, attr = split_name(name)
            name, which = f"{label}@{attr}", bench.get_metadata().get("backing", "?")
        out[f"{which} {name}"] = (median, unit)
    return out
