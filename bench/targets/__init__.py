"""Target registry: parse a --target spec into a Target."""
from __future__ import annotations

from bench.errors import UserError
from bench.targets.base import Availability, Mapping, Target
from bench.targets.ram import RamTarget

__all__ = ["Availability", "Mapping", "Target", "open_target", "SPECS"]

# Spec forms, for help texts and `python -m bench targets`.
SPECS = {
    "ram": "host RAM, anonymous and pre-faulted (default)",
    "ram:thp": "host RAM on transparent huge pages",
}


def open_target(spec: str) -> Target:
    """The Target for a --target spec; UserError names the valid forms."""
    if spec in ("ram", "ram:thp"):
        return RamTarget(thp=spec == "ram:thp")
    forms = ", ".join(SPECS)
    raise UserError(f"unknown target {spec!r}: use one of {forms}")


def discover() -> list[str]:
    """Target specs worth listing on this machine."""
    return list(SPECS)


def describe(target: Target) -> str:
    return SPECS.get(target.spec, target.spec)
