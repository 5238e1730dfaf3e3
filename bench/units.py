"""Turning pyperf values (seconds per inner loop) into the unit a workload reports.

pyperf stores time per inner loop; the runner sets inner_loops to the bytes or accesses
one call moves, so a value is seconds per byte (bandwidth) or per access (latency, rate).
"""
from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def convert(unit: str, seconds: float) -> float:
    """A per-unit time in seconds as the reported unit: GB/s, ns or M/s."""
    if unit == "GB/s":
        return 1.0 / seconds / 1e9
    if unit == "M/s":
        return 1.0 / seconds / 1e6
    if unit == "ns":
        return seconds * 1e9
    raise ValueError(f"unknown unit {unit!r}")


def higher_is_better(unit: str) -> bool:
    """Rates are better high, latencies low."""
    return unit != "ns"


def better(unit: str) -> str:
    """'higher is better' or 'lower is better', for titles."""
    return f"{'higher' if higher_is_better(unit) else 'lower'} is better"


def parse_size(text: str) -> int:
    """'64MiB', '4k', '1G', '4096' -> bytes (binary multiples); ValueError if malformed."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"bad size {text!r}: use e.g. 4096, 64KiB, 256MiB, 1GiB")
    return int(float(m.group(1)) * 1024 ** _POW[m.group(2).lower()])


def format_size(n: int) -> str:
    """Bytes as the largest exact binary unit: 4096 -> '4KiB', 64 << 20 -> '64MiB'."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"
