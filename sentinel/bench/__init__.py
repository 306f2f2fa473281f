"""Benchmarks: print figures, assert nothing (performance is measured, not tested)."""
