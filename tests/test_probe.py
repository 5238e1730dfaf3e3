"""Probe outcomes and expectations on this host, and the arm64 claims that hold anywhere."""
import dataclasses
import os

import pytest

from bench import kernels, outcomes, plan, probe, probe_cli
from bench.errors import UserError
from bench.outcomes import Outcome
from bench.targets import open_target


def _probe(name):
    return next(p for p in probe.probes() if p.name == name)


def test_ram_matrix_runs_every_probe_in_a_child():
    mapping = open_target("ram").open("normal", 4096)
    try:
        out = {o.probe: o for o in probe.probe_mapping(mapping, probe.probes(), "normal")}
    finally:
        mapping.close()
    assert out["exclusive"].result == "ok" and out["exclusive"].expected == "ok"
    assert all(o.result in ("ok", "skip") for o in out.values())
    assert all(o.agrees is not False for o in out.values())


def test_failed_store_exclusive_is_its_own_outcome():
    # The child reports an STXR that never succeeded with its own exit status.
    pid = os.fork()
    if pid == 0:
        os._exit(probe._EXIT_STXR_FAIL)
    _, status = os.waitpid(pid, 0)
    assert probe.decode(status, b"") == ("stxr-fail", f"STXR status 1 in all {probe.EXCL_TRIES} tries")
    assert "stxr-fail" in outcomes.__doc__


def test_dc_zva_expects_alignment_fault_on_device_for_arm64(monkeypatch):
    monkeypatch.setattr(kernels, "arch", lambda: "arm64")  # the expectation table, not the CPU
    zva = dataclasses.replace(_probe("dc-zva"))
    assert [probe.expectation(zva, t) for t in ("device-ngnrne", "device-gre", "normal-nc", "normal")] == \
        ["SIGBUS", "SIGBUS", "ok", "ok"]
    excl = _probe("exclusive")
    assert [probe.expectation(excl, t) for t in ("device-ngnre", "normal-nc", "normal")] == ["", "", "ok"]


def test_qemu_not_modelling_dc_zva_is_footnoted_and_xfail():
    o = Outcome("device-ngnre", "dc-zva", "ok", "", "SIGBUS")
    assert o.agrees is False
    assert probe.footnotes([o], emulated=False) == []
    (note,) = probe.footnotes([o], emulated=True)
    assert "QEMU does not model" in note
    assert "# XFAIL" in probe_cli.ktap("t", [o], emulated=True)
    assert "not ok 1 device-ngnre.dc-zva" in probe_cli.ktap("t", [o], emulated=False)


def test_zero_refused_where_the_effective_type_is_device(monkeypatch):
    reg = dict(kernels.registry())
    # The arm64 library declares zero NO_DEVICE (DC ZVA); it cannot be loaded here.
    reg["zero"] = dataclasses.replace(reg["zero"], flags=reg["zero"].flags | kernels.NO_DEVICE)
    monkeypatch.setattr(kernels, "registry", lambda: reg)
    with pytest.raises(UserError, match="zero@device-ngnre: refused.*DC ZVA"):
        plan.build(["device-ngnre"], ["zero"], [], [])
    skipped = []
    cases = plan.build(["device-ngnre", "normal-nc"], [], [], ["64KiB"], skipped=skipped)
    assert [c.attr for c in cases if c.kernel.name == "zero"] == ["normal-nc"]
    assert len(skipped) == 1 and "effective type device-ngnre" in skipped[0]
    # A Normal stage 1 under a Device stage 2 is Device too.
    with pytest.raises(UserError, match="effective type device-ngnre"):
        plan.build(["normal"], ["zero"], [], [], stage2="device-ngnre")


def test_zero_allowed_on_device_where_its_instruction_does_not_fault():
    if kernels.arch() == "arm64":
        pytest.skip("arm64 refuses it")
    assert plan.build(["device-ngnre"], ["zero"], [], [])
