"""Runs over several targets: `bench run --target A --target B` (names, round-robin
interleaving), `bench report --ref-target` (paired per-round speedups by stage-2 setting),
the refusal of a cacheable BAR mapping without --allow-cacheable-bar, and the lab's
in-process fast timings interleaved across backings (guestkit.lab.l1_fast)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pyperf
import pytest

from bench import kvmpolicy, plan, units
from bench.errors import UserError
from bench.targets.kmod import cacheable_bar_refusal
from bench.targets.kvm import check_cacheable_backing
from tests.conftest import QUICK, assert_one_line_error, run_cli

TARGETS = ("ram", "ram:thp")  # both exist on any x86_64 Linux (THP may be off: then the same memory)
ROUNDS = 3


def value_runs(path: Path) -> list[dict]:
    """Every run with values: name, target (metadata), round, start date, values, unit."""
    out = []
    for bench in pyperf.BenchmarkSuite.load(str(path)).get_benchmarks():
        common = bench.get_metadata()
        for run in bench.get_runs():
            if run.values:
                meta = {**common, **run.get_metadata()}
                out.append({"name": bench.get_name(), "target": meta["target"], "round": int(meta["round"]),
                            "date": meta["date"], "values": run.values, "unit": meta["report_unit"], "meta": meta})
    return out


def names_of(path: Path) -> list[str]:
    return [b.get_name() for b in pyperf.BenchmarkSuite.load(str(path)).get_benchmarks()]


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multi") / "multi.json"
    proc = run_cli("run", *(a for t in TARGETS for a in ("--target", t)), "--workload", "read-bw",
                   "--workload", "read-lat", "--size", "256KiB", "-p", str(ROUNDS), "-n", "1", "-w", "0",
                   "--min-time", "0.005", "-o", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_names_are_unique_and_carry_their_target(multi):
    runs = value_runs(multi)
    names = names_of(multi)
    assert len(names) == len(set(names)) == 2 * 2  # two workloads on each of two targets
    cases = {}
    for r in runs:
        label, target, attr = plan.split_name(r["name"])
        assert target == r["target"] and attr == "normal" and f"{{{target}}}@" in r["name"]
        cases.setdefault(target, set()).add((label, attr))
    assert set(cases) == set(TARGETS) and cases["ram"] == cases["ram:thp"]  # every case on both


def test_processes_ran_round_robin_across_targets(multi):
    runs = sorted(value_runs(multi), key=lambda r: r["date"])
    assert [r["round"] for r in runs] == sorted(r["round"] for r in runs)  # round r before round r+1
    for k in range(1, ROUNDS + 1):
        names = [r["name"] for r in runs if r["round"] == k]
        assert sorted(names) == sorted({r["name"] for r in runs})  # every case once a round
        # The two targets of one case run back to back (plan.merge_targets), in every round.
        for a, b in zip(names[::2], names[1::2]):
            assert plan.split_name(a)[0::2] == plan.split_name(b)[0::2] and a != b


def test_report_ref_target_gives_paired_per_round_ratios(multi):
    proc = run_cli("report", str(multi), "--ref-target", "ram", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["ref_target"] == "ram" and got["targets"] == list(TARGETS)
    assert "paired per-round" in got["method"]
    by_name = {}
    for r in value_runs(multi):
        by_name.setdefault(r["name"], {})[r["round"]] = (statistics.median(r["values"]), r["unit"])
    assert len(got["rows"]) == 2
    for row in got["rows"]:
        label, attr = row["benchmark"].rsplit("@", 1)
        ref, other = (by_name[f"{label}{{{t}}}@{attr}"] for t in TARGETS)
        unit = ref[1][1]
        # Speedup > 1 = better: the other side over ram for rates, ram over it for latencies.
        ratios = [units.convert(unit, other[k][0]) / units.convert(unit, ref[k][0]) for k in ref]
        if not units.higher_is_better(unit):
            ratios = [1 / x for x in ratios]
        assert row["ram:thp"]["speedup"] == pytest.approx(statistics.median(ratios), rel=1e-9)
        assert row["ram:thp"]["speedup_lo"] <= row["ram:thp"]["speedup"] <= row["ram:thp"]["speedup_hi"]
    text = run_cli("report", str(multi), "--ref-target", "ram")
    assert text.returncode == 0 and "x = speedup over ram" in text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) <= 72


def test_ref_target_bad_input_is_one_line(multi, tmp_path):
    assert_one_line_error(run_cli("report", str(multi), "--ref-target", "pci"), 2,
                          "--ref-target pci is not one of this run's targets: ram, ram:thp")
    single = tmp_path / "single.json"
    proc = run_cli("run", "--workload", "read-bw", "--size", "256KiB", *QUICK, "-o", str(single))
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(run_cli("report", str(single), "--ref-target", "ram"), 2, "has one target (ram)")


def test_one_target_keeps_its_names(tmp_path):
    out = tmp_path / "one.json"
    proc = run_cli("run", "--target", "ram:thp", "--workload", "read-bw", "--size", "256KiB", *QUICK, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    (run,) = value_runs(out)
    name = run["name"]
    assert "{" not in name and name.startswith("read-bw[") and name.endswith(",256KiB]@normal")
    assert plan.split_name(name)[1] is None and run["target"] == "ram:thp"


def test_a_target_named_twice_is_refused():
    assert_one_line_error(run_cli("run", "--target", "ram", "--target", "ram", "--workload", "read-bw"), 2,
                          "--target ram is given twice")


def test_split_name_and_merge_order():
    assert plan.split_name("read-bw[64B,64MiB]{kvm:vfio:0000:00:01.0/2}@normal-nc") == \
        ("read-bw[64B,64MiB]", "kvm:vfio:0000:00:01.0/2", "normal-nc")
    assert plan.split_name("wc-burst[64B]@normal-nc") == ("wc-burst[64B]", None, "normal-nc")
    a = plan.build(["normal"], ["read-bw", "read-lat"], [], ["256KiB"], target="ram")
    b = plan.build(["normal"], ["read-bw", "read-lat"], [], ["256KiB"], target="ram:thp")
    assert plan.merge_targets([a]) == a and all("{" not in c.name for c in a)
    merged = plan.merge_targets([a, b])
    assert [c.target for c in merged] == ["ram", "ram:thp"] * 2
    assert [c.name for c in merged][:2] == [a[0].name.replace("@", "{ram}@"), a[0].name.replace("@", "{ram:thp}@")]


# --- a cacheable host mapping of a PCIe BAR needs coherent memory ------------------------

@pytest.mark.parametrize("attr,scratch,emulated,allowed,refused", [
    ("normal", False, False, False, True),
    ("normal-wb", False, False, False, True),
    ("normal-wt", False, False, False, True),   # cached reads: stale data just the same
    ("normal", True, False, False, False),      # ivshmem: host RAM behind the BAR
    ("normal", False, True, False, False),      # TCG models no caches
    ("normal", False, False, True, False),      # the user vouches: --allow-cacheable-bar
    ("normal-nc", False, False, False, False),
    ("device-ngnre", False, False, False, False),
])
def test_cacheable_bar_decision(attr, scratch, emulated, allowed, refused):
    why = cacheable_bar_refusal("kmod:pci:0000:01:00.0/2 normal", attr, scratch, emulated, allowed)
    assert (why is not None) == refused
    if why:
        assert "\n" not in why and "coherent" in why and "--allow-cacheable-bar" in why


def test_kmod_normal_backing_needs_the_flag():
    spec = "kvm:kmod-normal:0000:01:00.0/2"
    with pytest.raises(UserError) as exc:
        check_cacheable_backing(spec, "kmod-normal", scratch=False, allowed=False, emulated=False)
    assert exc.value.code == 2 and str(exc.value).startswith(spec) and "Grace Hopper" in str(exc.value)
    for ok in ({"scratch": True, "allowed": False, "emulated": False},
               {"scratch": False, "allowed": True, "emulated": False},
               {"scratch": False, "allowed": False, "emulated": True}):
        check_cacheable_backing(spec, "kmod-normal", **ok)
    for backing in (b for b in kvmpolicy.BACKINGS if b != "kmod-normal"):
        check_cacheable_backing(spec, backing, scratch=False, allowed=False, emulated=False)


def test_flag_is_offered_by_run_and_probe():
    for cmd in ("run", "probe"):
        proc = run_cli(cmd, "--help")
        assert "--allow-cacheable-bar" in proc.stdout, cmd


# --- the lab's in-process fast timings, interleaved across targets -------------------------

def test_l1_fast_interleaves_targets_in_one_process(tmp_path):
    from guestkit.lab import l1_fast

    got = l1_fast.run_backings({t: ["read-bw", "copy-to"] for t in TARGETS}, ["normal"], "64KiB", "fast", tmp_path)
    assert got.failed == [] and got.cases == 4 and got.file is not None
    runs = sorted(value_runs(got.file), key=lambda r: r["date"])
    assert len(runs) == 4 * l1_fast.ROUNDS
    assert [r["round"] for r in runs] == sorted(r["round"] for r in runs)
    for k in range(1, l1_fast.ROUNDS + 1):  # every round: each target's turn, each case once
        turn = [r["target"] for r in runs if r["round"] == k]
        assert turn == ["ram", "ram", "ram:thp", "ram:thp"]
    proc = run_cli("report", str(got.file), "--ref-target", "ram")
    assert proc.returncode == 0, proc.stderr
    assert "the CI is over rounds of one process" in proc.stdout


def fast_file(results: Path) -> Path:
    (path,) = [p for p in results.glob("*/*-payload-fast*.json")]
    return path


@pytest.mark.guest
def test_lab_times_the_three_stage2_settings_in_one_boot(guest_ready, tmp_path):
    """sid (7.2) with -cpu max (FWB): sysfs Device, vfio Normal-NC and kmod-normal Normal WB,
    every case interleaved by rounds in one file, each labelled with its stage-2 read."""
    res = tmp_path / "results"
    proc = run_cli("lab", "--host-kernel", "sid", "-o", str(res), "--json", module="guestkit", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = fast_file(res)
    runs = value_runs(path)
    metas = {r["meta"]["backing"]: r["meta"] for r in runs}
    assert {"sysfs", "vfio", "kmod-normal"} <= set(metas)
    for backing in ("sysfs", "vfio", "kmod-normal"):
        meta = metas[backing]
        pred = kvmpolicy.predict(meta["host_kernel"], backing, meta["fwb"] == "true", meta["dic"] == "true")
        assert meta["stage2_read"] == pred.stage2, (backing, meta["stage2_read"])
    assert [metas[b]["stage2_read"] for b in ("sysfs", "vfio", "kmod-normal")] == \
        ["device-ngnre", "normal-nc", "normal"]
    runs = sorted(value_runs(path), key=lambda r: r["date"])
    assert {r["round"] for r in runs} == {1, 2, 3}
    assert [r["round"] for r in runs] == sorted(r["round"] for r in runs)  # round-major over every backing
    report = run_cli("report", str(path), "--ref-target", "sysfs", "--format", "json")
    assert report.returncode == 0, report.stderr
    got = json.loads(report.stdout)
    # Four backings: the short stage-2 names keep the table within 72 columns.
    assert got["columns"][0] == "sysfs (Dev-nGnRE)" and {"vfio (NC)", "kmod-normal (WB)"} <= set(got["columns"])
    paired = [row for row in got["rows"] if "speedup" in row.get("kvm:vfio:0000:00:01.0/2", {})]
    assert paired and all(row["kvm:vfio:0000:00:01.0/2"]["speedup"] > 0 for row in paired)
