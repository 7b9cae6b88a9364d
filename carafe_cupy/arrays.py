"""The array front end, for arrays from any library, without autograd.

``carafe``, ``reassemble`` and their backward functions here take cupy arrays, or any array with
``__dlpack__`` and ``__dlpack_device__`` (JAX, numpy, torch, ...), run on the inputs'
device (on a GPU, on CuPy's current stream there; in host memory, on the PyTorch CPU
path, or the simulator when it is on), and return the inputs' kind of array.
:func:`carafe_cupy.carafe` sends everything but torch tensors here; call this
module directly to run torch tensors through it too (without autograd).
"""

from __future__ import annotations

from ._array.api import carafe, carafe_backward, reassemble, reassemble_backward

__all__ = ["carafe", "carafe_backward", "reassemble", "reassemble_backward"]
