"""analysis: statistics, reports, plots and regression tracking over dmtbench results.

Reads only pyperf JSON files written by `python -m bench run` (plain or gzip)."""
