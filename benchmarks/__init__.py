"""Wall-clock and scaling benchmarks, run as ``python -m benchmarks <name> [--quick]``."""
