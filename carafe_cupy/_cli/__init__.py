"""The `check` and `info` commands behind `python -m carafe_cupy`.
A top layer: may import every other part of the package."""
