"""L0: Where guestkit keeps downloads and built images (outside the repository)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$DMTBENCH_GUEST_CACHE, else ~/.cache/dmtbench/guest."""
    env = os.environ.get("DMTBENCH_GUEST_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dmtbench" / "guest"
    return base


def arch_cache(arch: str) -> Path:
    path = cache_root() / arch
    path.mkdir(parents=True, exist_ok=True)
    return path
