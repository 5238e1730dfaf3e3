"""The run matrix: targets x attributes x workloads x parameter values x sizes, as named cases.

Benchmark names: `<workload>[<params>]@<attr>` in a run over one target (every result
file before multi-target runs has these, and they stay); in a run over several targets
the target spec goes in braces before the attribute, `<workload>[<params>]{<target>}@<attr>`
(e.g. `read-bw[64B,64MiB]{ram:thp}@normal`), so the name stays unique and everything that
splits a name at its last '@' (label, attribute) still works.  split_name() undoes both forms.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from bench import kernels, memtypes
from bench.errors import UserError
from bench.kernels import Args, Kernel
from bench.units import format_size, parse_size

BYTE_PARAMS = ("width", "burst", "stride")  # rendered with a B suffix in case names
SEED = 0x5EED


@dataclass(frozen=True)
class Case:
    """One benchmark: a workload with fixed parameters on one attribute of one target.
    `tagged`: the run has several targets, so the name carries this one's spec."""

    kernel: Kernel
    params: tuple[tuple[str, str], ...]
    size: int
    attr: str
    target: str = ""
    tagged: bool = False

    @property
    def label(self) -> str:
        """'read-bw[64B,64MiB]': the workload part of the name."""
        parts = [f"{v}B" if k in BYTE_PARAMS else v for k, v in self.params]
        if self.kernel.sized:
            parts.append(format_size(self.size))
        return f"{self.kernel.name}[{','.join(parts)}]"

    @property
    def name(self) -> str:
        """The pyperf benchmark name: '<workload>[<params>]@<attr>', or with several
        targets in the run '<workload>[<params>]{<target>}@<attr>'."""
        where = f"{{{self.target}}}" if self.tagged else ""
        return f"{self.label}{where}@{self.attr}"

    @property
    def units_per_loop(self) -> int:
        """Bytes (bandwidth) or accesses (latency, rate) that one kernel loop accounts for."""
        if self.kernel.per_loop == kernels.PER_SIZE:
            return self.size
        if self.kernel.per_loop == kernels.PER_BURST:
            return int(dict(self.params)["burst"])
        return 1

    def args(self, buf: int = 0, ram: int = 0) -> Args:
        """The C argument block for this case."""
        p = dict(self.params)
        mode = self.kernel.param("mode")
        return Args(
            buf=buf or None, ram=ram or None, size=self.size,
            width=int(p.get("width", kernels.widest_width())), burst=int(p.get("burst", 0)),
            mode=mode.values.index(p["mode"]) if mode else 0, stride=int(p.get("stride", 0)),
            seed=SEED,
        )


def split_name(name: str) -> tuple[str, str | None, str]:
    """'read-bw[64B,64MiB]{ram:thp}@normal' -> ('read-bw[64B,64MiB]', 'ram:thp', 'normal');
    a name without a target part gives None for it."""
    head, _, attr = name.rpartition("@")
    if head.endswith("}") and "{" in head:
        label, _, target = head[:-1].rpartition("{")
        return label, target, attr
    return head, None, attr


def merge_targets(per_target: list[list[Case]], tag: bool = False) -> list[Case]:
    """One case list from each target's plan.  With several targets (or `tag`) every case
    is tagged (its name carries the target) and the cases of one (attribute, workload,
    parameters) follow each other, target by target, so in each interleaved round the
    sides of a --ref-target pair run back to back.  One target: its cases, unchanged."""
    if len(per_target) == 1 and not tag:
        return list(per_target[0])
    groups: dict[tuple[str, str], list[Case]] = {}
    for cases in per_target:
        for case in cases:
            groups.setdefault((case.attr, case.label), []).append(dataclasses.replace(case, tagged=True))
    return [case for group in groups.values() for case in group]


def parse_params(items: list[str]) -> dict[str, list[str]]:
    """['mode=plain,nt', 'width=8'] -> {'mode': ['plain', 'nt'], 'width': ['8']}."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, vals = item.partition("=")
        if not sep or not key or not vals:
            raise UserError(f"bad --param {item!r}: use KEY=V1[,V2...], e.g. --param width=8,64")
        out.setdefault(key, []).extend(v for v in vals.split(",") if v)
    return out


def parse_sizes(items: list[str]) -> list[int]:
    try:
        return [parse_size(s) for s in items]
    except ValueError as exc:
        raise UserError(str(exc)) from None


def select_kernels(names: list[str]) -> list[Kernel]:
    """The kernels named (all when none), in the order given."""
    reg = kernels.registry()
    if not names:
        return list(reg.values())
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise UserError(f"unknown workload {unknown[0]!r}: run 'python -m bench list' (known: {', '.join(reg)})")
    return [reg[n] for n in dict.fromkeys(names)]


def default_value(k: Kernel, name: str) -> str:
    """The value a run uses for parameter `name` when none is given (widths follow the CPU)."""
    p = k.param(name)
    assert p is not None
    if name == "width" and not kernels.width_supported(int(p.default)):
        # The declared default needs a wider ISA than this CPU has: use the widest it has.
        return str(max(int(v) for v in p.values if kernels.width_supported(int(v))))
    return p.default


def _param_grid(k: Kernel, overrides: dict[str, list[str]]) -> list[tuple[tuple[str, str], ...]]:
    axes = []
    for p in k.params:
        vals = overrides.get(p.name, [default_value(k, p.name)])
        bad = [v for v in vals if v not in p.values]
        if bad:
            raise UserError(f"{k.name}: {p.name}={bad[0]} is not allowed; use one of {', '.join(p.values)}")
        axes.append([(p.name, v) for v in vals])
    return [tuple(combo) for combo in itertools.product(*axes)]


DEVICE_FAULT = ("its instruction faults on Device memory here (DC ZVA: an alignment fault on arm64 "
                "hardware, though QEMU does not model it)")


def effective_type(attr: str, stage2: str | None, fwb: bool) -> str:
    """The type the CPU applies: stage 1 combined with a declared stage 2, else stage 1
    (a stage-1 Device type stays Device under any stage 2 without FWB)."""
    if stage2 in (None, "none", "unknown"):
        return attr
    return memtypes.combine(attr, stage2, fwb).effective


def refusal(k: Kernel, attr: str, stage2: str | None = None, fwb: bool = False) -> str | None:
    """Why workload k must not run on attr, or None."""
    effective = effective_type(attr, stage2, fwb)
    if not k.device_ok and memtypes.get(effective).device:
        return f"{k.name}@{attr}: refused, {DEVICE_FAULT}; effective type {effective}"
    return None


def build(attrs: list[str], names: list[str], params: list[str], sizes: list[str],
          max_size: int | None = None, stage2: str | None = None, fwb: bool = False,
          skipped: list[str] | None = None, target: str = "") -> list[Case]:
    """Every case, attr-major, validated against what the kernels support.  Default sizes
    are capped at max_size (a BAR smaller than a workload's default).  A workload the
    effective type forbids (zero on arm64 Device memory) is a UserError when named, and
    left out of the default matrix with its reason appended to `skipped`.  Each case
    carries `target` (the spec of the target it runs on)."""
    ks = select_kernels(names)
    overrides = parse_params(params)
    known = {p.name for k in ks for p in k.params}
    for key in overrides:
        if key not in known:
            raise UserError(f"--param {key}: no selected workload has it (see 'python -m bench list')")
    size_list = parse_sizes(sizes)
    cases = []
    for attr in (memtypes.canonical(a) for a in attrs):
        for k in ks:
            if why := refusal(k, attr, stage2, fwb):
                if names:
                    raise UserError(f"{why}: drop --workload {k.name} or the Device attributes")
                if skipped is not None:
                    skipped.append(why)
                continue
            for combo in _param_grid(k, overrides):
                default = min(k.default_size, max_size or k.default_size)
                for size in (size_list or [default]) if k.sized else [default]:
                    cases.append(_checked(Case(k, combo, size, attr, target)))
    return list(dict.fromkeys(cases))


def _checked(case: Case) -> Case:
    # The kernel's own supported() decides (alignment, widths, ISA); 0x1000 is never touched.
    rc = kernels.lib().dmt_supported(case.kernel.index, case.args(buf=0x1000, ram=0x1000))
    if rc == -95:
        cap = kernels.max_width_cap()
        why = f"${kernels.MAX_WIDTH_ENV}={cap} caps widths" if cap < 64 else f"this CPU has {', '.join(kernels.features())}"
        raise UserError(f"{case.label}: width not available ({why}); pick a smaller width")
    if rc != 0:
        raise UserError(f"{case.label}: size or parameters rejected by the kernel (sizes must be multiples of 256 B, bursts <= size)")
    return case
