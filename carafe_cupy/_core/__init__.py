"""Errors, the problem's geometry and dtype tables, and argument checks.
Imports nothing else of the package; no torch, no CuPy."""
