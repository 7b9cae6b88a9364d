"""PyTorch integration: the custom ops with their fakes, autograd and autocast,
the fused-normaliser ops, the standard-op decomposition for exporters, and the
torch side of the public functions. May import _core, _kernels, _plan, _runtime
and _cpu; nothing below imports it. Importing it registers every op."""

from . import autocast, fused, ops  # noqa: F401 (register the ops)
