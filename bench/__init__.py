"""dmtbench: microbenchmarks for device memory types (see README.md)."""

__version__ = "0.1.0"
