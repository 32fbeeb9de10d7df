"""``nbconv bench``: the standard shapes timed, checked, and compared with PyTorch in-process."""

from ._run import BenchResult, run_bench

__all__ = ["BenchResult", "run_bench"]
