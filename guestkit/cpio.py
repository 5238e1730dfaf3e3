"""L0: A writer for the Linux initramfs format (cpio "newc"), so images need no cpio binary."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class CpioWriter:
    """Append files, directories and symlinks; close() writes the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes, mtime: int = 0) -> None:
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, mtime, len(data), 0, 0, 0, 0, len(name_b), 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + name_b + b"\0" * (-(110 + len(name_b)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"")

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_tree(self, root: Path, prefix: str = "") -> None:
        """Everything under root, as prefix/<relative path>, parents before children."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root)
            base = f"{prefix}/{rel}".strip("/").removesuffix("/.") if str(rel) != "." else prefix.strip("/")
            if base:
                self.add_dir(base, stat.S_IMODE(os.lstat(dirpath).st_mode))
            for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                path = os.path.join(dirpath, name)
                arc = f"{base}/{name}" if base else name
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self.add_symlink(arc, os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(arc, Path(path).read_bytes(), stat.S_IMODE(st.st_mode))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, b"")
        self.out.write(b"\0" * (-self.out.tell() % 512))
