"""Benchmarks of nc-probe (run as ``python -m bench.<name>``)."""
