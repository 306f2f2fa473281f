"""The ``sentinel`` command line (typer)."""
