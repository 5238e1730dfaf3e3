"""Build hook: compile c_kernels/ into bench/libdmtkernels.so (a plain shared library
loaded with ctypes, not a Python extension), for wheels and editable installs alike."""
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import kbuild  # noqa: E402  (stdlib-only module, importable before deps)


class BuildKernels(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # A ctypes library, so no CPython ABI tag in its name.
        return str(Path(*fullname.split("."))) + ".so"

    def build_extension(self, ext: Extension) -> None:
        kbuild.build(Path(self.get_ext_fullpath(ext.name)))


setup(
    ext_modules=[Extension("bench.libdmtkernels", sources=[str(p.relative_to(HERE)) for p in kbuild.sources()])],
    cmdclass={"build_ext": BuildKernels},
)
