"""L0: Debian packages for guestkit: the host's own apt (QEMU, cross compiler) and, for the
guest, packages of another architecture downloaded with apt into our cache without
touching the host's dpkg (no dpkg --add-architecture).

The bookworm-backports source is derived from the mirror already configured: we copy its
URIs and keyring and change only the suite, so no host name is ever written by us.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from bench.errors import UserError

SOURCES_DIR = Path("/etc/apt/sources.list.d")
BACKPORTS_FILE = SOURCES_DIR / "dmtbench-backports.sources"


def _run(argv: list[str], what: str) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{what} failed: {tail}")
    return proc.stdout


def configured_debian_source() -> tuple[str, str, str]:
    """(URIs, suite, Signed-By) of the configured Debian main-archive source."""
    for path in sorted(SOURCES_DIR.glob("*.sources")):
        if path == BACKPORTS_FILE:
            continue
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            suites = fields.get("Suites", "").split()
            if fields.get("Types", "") == "deb" and suites and not suites[0].endswith(("-security", "-updates")):
                return fields.get("URIs", ""), suites[0], fields.get("Signed-By", "")
    for path in [Path("/etc/apt/sources.list"), *sorted(SOURCES_DIR.glob("*.list"))]:
        if path.exists():
            m = re.search(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+([a-z]+)\s", path.read_text(), re.M)
            if m:
                signed = re.search(r"signed-by=(\S+)", m.group(1) or "")
                return m.group(2), m.group(3), signed.group(1) if signed else ""
    raise UserError("no Debian apt source is configured: add your mirror to /etc/apt/sources.list.d, then retry")


def ensure_backports() -> str:
    """Add <suite>-backports beside the configured mirror (idempotent); returns the suite."""
    uris, suite, signed = configured_debian_source()
    target = f"{suite}-backports"
    text = f"Types: deb\nURIs: {uris}\nSuites: {target}\nComponents: main\n"
    if signed:
        text += f"Signed-By: {signed}\n"
    if not BACKPORTS_FILE.exists() or BACKPORTS_FILE.read_text() != text:
        BACKPORTS_FILE.write_text(text)
        update()
    return target


def update() -> None:
    _run(["apt-get", "update", "-qq"], "apt-get update")


def installed_version(pkg: str) -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg], capture_output=True, text=True)
    parts = proc.stdout.split()
    return parts[-1] if proc.returncode == 0 and "installed" in parts else None


def install(pkgs: list[str], release: str | None = None) -> None:
    """apt-get install (from `release` when given), without recommends."""
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    if release:
        argv += ["-t", release]
    _run(argv + pkgs, f"apt-get install {' '.join(pkgs)}")


class ForeignApt:
    """apt for another Debian architecture, with its own lists in our cache."""

    def __init__(self, arch: str, cache: Path, suite: str | None = None) -> None:
        """`suite`: use only that suite of the configured mirror (e.g. sid), with its own
        source list in the cache, instead of the host's sources."""
        self.arch = arch
        self.cache = cache
        for sub in ("lists/partial", "apt/archives/partial", "debs", "sources.list.d"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
        self.sources = None
        if suite:
            uris, _, signed = configured_debian_source()
            self.sources = cache / "sources.list"
            text = f"deb [{'signed-by=' + signed if signed else ''}] {uris} {suite} main\n".replace("[] ", "")
            if not self.sources.exists() or self.sources.read_text() != text:
                self.sources.write_text(text)

    def _opts(self) -> list[str]:
        opts = [f"-oAPT::Architecture={self.arch}", f"-oAPT::Architectures={self.arch}",
                f"-oDir::State::Lists={self.cache / 'lists'}", f"-oDir::Cache={self.cache / 'apt'}",
                "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root"]
        if self.sources:
            opts += [f"-oDir::Etc::SourceList={self.sources}", f"-oDir::Etc::SourceParts={self.cache / 'sources.list.d'}"]
        return opts

    def update(self) -> None:
        _run(["apt-get", *self._opts(), "update", "-qq"], f"apt-get update ({self.arch})")

    def ensure_lists(self) -> "ForeignApt":
        """Fetch the package lists once (later calls reuse them)."""
        if not any((self.cache / "lists").glob("*Packages*")):
            self.update()
        return self

    def query(self, args: list[str]) -> str:
        """apt-cache ARGS against these lists (pkgnames, policy, depends...)."""
        return _run(["apt-cache", *self._opts(), *args], f"apt-cache {args[0]} ({self.arch})")

    def depends_on(self, meta: str) -> str:
        """The first Depends of a metapackage (linux-image-arm64 -> linux-image-6.1.0-N-arm64)."""
        out = _run(["apt-cache", *self._opts(), "depends", meta], f"apt-cache depends {meta}")
        m = re.search(r"Depends:\s*(\S+)", out)
        if not m:
            raise UserError(f"cannot resolve {meta} for {self.arch}")
        return m.group(1)

    def download(self, pkgs: list[str]) -> list[Path]:
        """Download .debs into cache/debs (kept between runs); returns their paths."""
        debs = self.cache / "debs"
        have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
        missing = [p for p in pkgs if p not in have]
        if missing:
            proc = subprocess.run(["apt-get", *self._opts(), "download", "-qq", *missing], cwd=debs,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise UserError(f"downloading {self.arch} packages failed: {proc.stderr.strip().splitlines()[-1]}")
            have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
        return [have[p] for p in pkgs]
