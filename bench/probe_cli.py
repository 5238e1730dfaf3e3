"""`python -m bench probe`: the probe matrix per attribute as a table, JSON or KTAP."""
from __future__ import annotations

import argparse
import json
import sys
import termios

from bench import kernels, memtypes, metadata
from bench.errors import UserError
from bench.outcomes import NOT_MODELLED, Outcome, infer_class, probes
from bench.probe import footnotes, probe_mapping
from bench.runner import stage2_of
from bench.targets import open_target

PROBE_BYTES = 4096


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench probe", description=__doc__)
    p.add_argument("--target", default="ram")
    p.add_argument("--attr", action="append", default=[], help="repeatable; default: all the target offers")
    p.add_argument("--probe", action="append", default=[], help="probe name (repeatable; default: all)")
    p.add_argument("--stage2", default=None, help="declared stage-2 attribute (for expectations)")
    p.add_argument("--fwb", action="store_true")
    p.add_argument("--progress", action="store_true",
                   help="on stderr, '# probe ATTR NAME' before each probe and '# outcome JSON' after it (flushed): "
                        "who watches a VM that its host's KVM may kill learns which probe did it")
    p.add_argument("--allow-reads", action="store_true", help="allow reading a BAR that is not known scratch memory")
    p.add_argument("--allow-writes", action="store_true", help="allow writing a BAR that is not known scratch memory")
    p.add_argument("--allow-cacheable-bar", action="store_true",
                   help="allow a cacheable host mapping of a PCIe BAR (kvm:kmod-normal, kmod normal): coherent memory only")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--ktap", action="store_true", help="KTAP output, as kselftest prints it")
    return p


def expected_type(attr: str, stage2: str | None, fwb: bool) -> str:
    """What the probes should see: stage 1 combined with a declared stage 2, else stage 1."""
    return memtypes.combine(attr, stage2, fwb).effective if stage2 not in (None, "none", "unknown") else attr


def cell(o: Outcome) -> str:
    text = o.result if not o.code or o.result == "skip" else f"{o.result}/{o.code.split('_')[-1]}"
    return text + ("!" if o.agrees is False else "")


def table(attrs: list[str], rows: dict[str, list[Outcome]]) -> str:
    names = [o.probe for o in rows[attrs[0]]]
    w = max(len(n) for n in names)
    lines = [f"{'probe':<{w}}  " + "  ".join(f"{a:<14}" for a in attrs)]
    for i, name in enumerate(names):
        lines.append(f"{name:<{w}}  " + "  ".join(f"{cell(rows[a][i]):<14}" for a in attrs))
    return "\n".join(lines)


def stage2_comment(attr: str, fields: dict) -> str:
    """One KTAP comment with the stage-2 descriptor read for attr's VM (kvm target)."""
    from bench.targets.kvm import json_text  # the kvm target's own rendering (imported only for it)

    return (f"# stage2 {attr}: read={fields['stage2_read']} memattr={json_text(fields['stage2_memattr'])} "
            f"leaf={json_text(fields['stage2_leaf'])} fwb={json_text(fields['fwb'])}")


def ktap(target: str, outcomes: list[Outcome], emulated: bool = False, stage2: dict[str, dict] | None = None) -> str:
    """KTAP as kselftest prints it; under emulation an outcome QEMU does not model is XFAIL.
    stage2 (kvm target): attr -> stage-2 read fields, a comment before that attr's cases."""
    lines = ["KTAP version 1", f"# dmtbench probe on {target} ({kernels.arch()})", f"1..{len(outcomes)}"]
    counts = {"pass": 0, "fail": 0, "skip": 0, "xfail": 0}
    said: set[str] = set()
    for n, o in enumerate(outcomes, 1):
        name = f"{o.attr}.{o.probe}"
        if stage2 and o.attr in stage2 and o.attr not in said:
            said.add(o.attr)
            lines.append(stage2_comment(o.attr, stage2[o.attr]))
        if o.result == "skip":
            counts["skip"] += 1
            lines.append(f"ok {n} {name} # SKIP {o.code}")
        elif o.agrees is False and emulated and o.probe in NOT_MODELLED:
            counts["xfail"] += 1
            lines.append(f"ok {n} {name} # XFAIL expected {o.expected}, got {o.result}: QEMU does not model it")
        elif o.agrees is False:
            counts["fail"] += 1
            lines.append(f"not ok {n} {name} # expected {o.expected}, got {o.result} {o.code}".rstrip())
        else:
            counts["pass"] += 1
            lines.append(f"ok {n} {name} # {o.result} {o.code}".rstrip())
    lines.append(f"# totals: pass:{counts['pass']} fail:{counts['fail']} xfail:{counts['xfail']} xpass:0 skip:{counts['skip']} error:0")
    return "\n".join(lines)


def probe_each(mapping, selected: list, effective: str | None, progress: bool) -> list[Outcome]:
    """probe_mapping; with --progress one probe at a time, announced before and reported
    after on stderr, so the outcomes before a probe that takes the whole machine down survive."""
    if not progress:
        return probe_mapping(mapping, selected, effective)
    out: list[Outcome] = []
    for p in selected:
        _say(f"# probe {mapping.attr} {p.name}")
        out += probe_mapping(mapping, [p], effective)
        _say(f"# outcome {json.dumps(out[-1].to_dict())}")
    return out


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    if sys.stderr.isatty():  # a serial console: the line must be out before a probe that may stop the machine
        termios.tcdrain(sys.stderr.fileno())


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    target = open_target(args.target, args.allow_reads, args.allow_writes, allow_cacheable_bar=args.allow_cacheable_bar)
    attrs = [memtypes.canonical(a) for a in args.attr] or target.attrs()
    for attr in attrs:
        target.require(attr)
        target.check_access(attr, reads=True, writes=False)
    known = {p.name: p for p in probes()}
    bad = [n for n in args.probe if n not in known]
    if bad:
        raise UserError(f"unknown probe {bad[0]!r}: use one of {', '.join(known)}")
    selected = [known[n] for n in args.probe] or list(known.values())
    stage2 = stage2_of(args, target)  # the same answer `bench run` records
    if args.progress:  # before any probe: a probe that stops the machine must not take this with it
        _say(f"# emulated {str(metadata.emulated()).lower()}")
    rows: dict[str, list[Outcome]] = target.run_probes(attrs, selected, stage2) or {}  # kvm: inside a VM
    for attr in attrs if not rows else []:
        mapping = target.open(attr, PROBE_BYTES)
        try:
            rows[attr] = probe_each(mapping, selected, expected_type(attr, stage2, args.fwb), args.progress)
        finally:
            mapping.close()
    inferred = {a: infer_class(rows[a]) for a in attrs}
    notes = footnotes([o for a in attrs for o in rows[a]], metadata.emulated())
    reads: dict[str, dict] = getattr(target, "stage2_reads", {})  # kvm: the descriptor read per attribute
    if args.json:
        # Each outcome carries its attribute's stage-2 read (stage2_read, stage2_memattr,
        # stage2_leaf, fwb): the lab's L1 runner passes outcomes through one by one.
        print(json.dumps({"target": target.spec, "arch": kernels.arch(), "stage2": stage2,
                          "emulated": metadata.emulated(), "inferred": inferred, **target.stage2_facts(), "notes": notes,
                          "outcomes": [{**o.to_dict(), **reads.get(a, {})} for a in attrs for o in rows[a]]},
                         indent=1))
    elif args.ktap:
        print(ktap(target.spec, [o for a in attrs for o in rows[a]], metadata.emulated(), reads))
    else:
        print(f"probe matrix on {target.spec} ({kernels.arch()}{', emulated' if metadata.emulated() else ''}); "
              "'!' = differs from the architectural expectation")
        print(table(attrs, rows))
        print("inferred: " + ", ".join(f"{a} -> {c}" for a, c in inferred.items()))
        facts = target.stage2_facts()
        if facts:
            print("stage 2: " + ", ".join(f"{k} {v}" for k, v in facts.items() if k != "stage2_reason"))
        for attr in attrs if reads else []:
            print(stage2_comment(attr, reads[attr]).removeprefix("# "))
        for note in notes:
            print(f"note: {note}")
    return 0
