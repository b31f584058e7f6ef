"""The ``osa-grid`` command line (typer)."""
