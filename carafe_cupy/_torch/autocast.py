"""Autocast for the reassembly op: floating inputs are cast to the region's
dtype and the op runs with autocast off."""

from __future__ import annotations

import torch

from .ops import forward_op

# Autocast: floating inputs are cast to the region's dtype (fp64 is left alone, as
# autocast does for its own ops) and the op runs with autocast off. The dtype is
# read when the op runs, so one registration serves fp16 and bf16 regions alike;
# torch.library.register_autocast would fix a single dtype per device.
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
_autocast_library = torch.library.Library("carafe_cupy", "FRAGMENT")


def _autocast_forward(device_type: str):
    def kernel(features, masks, kernel_size, group_size, scale_factor, stride=1, dilation=1):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(tensor: torch.Tensor) -> torch.Tensor:
            eligible = (
                tensor.is_floating_point()
                and tensor.device.type == device_type
                and tensor.dtype != torch.float64
            )
            return tensor.to(dtype) if eligible else tensor

        with torch.autocast(device_type, enabled=False):
            return forward_op(
                cast(features),
                cast(masks),
                kernel_size,
                group_size,
                scale_factor,
                stride,
                dilation,
            )

    return kernel


for _device_type in _AUTOCAST_DEVICE_TYPES:
    _autocast_library.impl(
        "carafe_forward", _autocast_forward(_device_type), f"Autocast{_device_type.upper()}"
    )


