"""mmcv's CARAFE CUDA op as a baseline, built on a GPU machine from mmcv's own
sources with ``torch.utils.cpp_extension.load`` (no mmcv install needed).

Nothing from mmcv is committed. Fetch its CARAFE sources into the ignored
folder ``benchmarks/third_party/mmcv`` first (on a machine with network access;
then carry the folder to the GPU machine):

    git clone --depth 1 --filter=blob:none --sparse \\
        https://github.com/open-mmlab/mmcv benchmarks/third_party/mmcv
    git -C benchmarks/third_party/mmcv sparse-checkout set --no-cone \\
        mmcv/ops/csrc/common mmcv/ops/csrc/pytorch/cuda/carafe_cuda.cu

(mmcv's source distribution holds the same files under ``mmcv/ops/csrc``; its old
``setup.py`` needs an older setuptools to download, so the repository is simpler.)
The folder can also be named with ``MMCV_CARAFE_SOURCES``.

The binding below is this project's: it declares mmcv's two launchers, gives
the device-registry symbols they refer to a definition, and wraps them in an
autograd function that allocates the scratch tensors mmcv's Python wrapper
allocates (channels-last copies of features, masks, output and gradients).
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCES = HERE / "third_party" / "mmcv"
KERNEL_FILE = Path("mmcv/ops/csrc/pytorch/cuda/carafe_cuda.cu")
INCLUDE_DIRS = (Path("mmcv/ops/csrc/common"), Path("mmcv/ops/csrc/common/cuda"))

BINDING = r"""
#include <torch/extension.h>
using at::Tensor;

void CARAFEForwardCUDAKernelLauncher(const Tensor features, const Tensor masks,
    Tensor rfeatures, Tensor routput, Tensor rmasks, Tensor output,
    const int kernel_size, const int group_size, const int scale_factor);
void CARAFEBackwardCUDAKernelLauncher(const Tensor top_grad, const Tensor rfeatures,
    const Tensor masks, Tensor rtop_grad, Tensor rbottom_grad_hs, Tensor rbottom_grad,
    Tensor rmask_grad, Tensor bottom_grad, Tensor mask_grad,
    const int kernel_size, const int group_size, const int scale_factor);

// mmcv's kernel file registers itself under these names; they only need to exist here.
void carafe_forward_impl(Tensor features, Tensor masks, Tensor rfeatures, Tensor routput,
    Tensor rmasks, Tensor output, int kernel_size, int group_size, int scale_factor) {
  CARAFEForwardCUDAKernelLauncher(features, masks, rfeatures, routput, rmasks, output,
                                  kernel_size, group_size, scale_factor);
}
void carafe_backward_impl(Tensor top_grad, Tensor rfeatures, Tensor masks, Tensor rtop_grad,
    Tensor rbottom_grad_hs, Tensor rbottom_grad, Tensor rmask_grad, Tensor bottom_grad,
    Tensor mask_grad, int kernel_size, int group_size, int scale_factor) {
  CARAFEBackwardCUDAKernelLauncher(top_grad, rfeatures, masks, rtop_grad, rbottom_grad_hs,
      rbottom_grad, rmask_grad, bottom_grad, mask_grad, kernel_size, group_size, scale_factor);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &carafe_forward_impl);
  m.def("backward", &carafe_backward_impl);
}
"""


def sources_dir() -> Path:
    return Path(os.environ.get("MMCV_CARAFE_SOURCES", DEFAULT_SOURCES))


def available() -> str | None:
    """None when the sources are there, else why not."""
    root = sources_dir()
    if not (root / KERNEL_FILE).is_file():
        return f"mmcv CARAFE sources not found under {root} (see benchmarks/mmcv_carafe.py)"
    return None


def build(verbose: bool = False):
    """Compile mmcv's CARAFE kernels and this binding; return the extension module."""
    from torch.utils.cpp_extension import load

    missing = available()
    if missing:
        raise FileNotFoundError(missing)
    root = sources_dir()
    build_dir = HERE / "third_party" / "build-mmcv-carafe"
    build_dir.mkdir(parents=True, exist_ok=True)
    binding = build_dir / "binding.cpp"
    binding.write_text(BINDING)
    return load(
        name="mmcv_carafe_baseline",
        sources=[str(binding), str(root / KERNEL_FILE)],
        extra_include_paths=[str(root / path) for path in INCLUDE_DIRS],
        extra_cflags=["-O3", "-DMMCV_WITH_CUDA"],
        extra_cuda_cflags=["-O3", "-DMMCV_WITH_CUDA"],
        build_directory=str(build_dir),
        verbose=verbose,
    )


def carafe_function(extension):
    """``carafe(features, masks, k, g, s)`` through mmcv's kernels, with autograd."""
    import torch

    class MmcvCarafe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, features, masks, kernel_size, group_size, scale_factor):
            n, c, h, w = features.shape
            output = features.new_zeros((n, c, h * scale_factor, w * scale_factor))
            routput = torch.zeros_like(output)
            rfeatures = torch.zeros_like(features)
            rmasks = torch.zeros_like(masks)
            extension.forward(features, masks, rfeatures, routput, rmasks, output,
                              kernel_size, group_size, scale_factor)
            ctx.save_for_backward(features, masks, rfeatures)
            ctx.sizes = (kernel_size, group_size, scale_factor)
            return output

        @staticmethod
        def backward(ctx, grad_output):
            features, masks, rfeatures = ctx.saved_tensors
            grad_output = grad_output.contiguous()
            scratch = [torch.zeros_like(grad_output) for _ in range(2)]
            rgrad_input, rgrad_masks = torch.zeros_like(features), torch.zeros_like(masks)
            grad_input, grad_masks = torch.zeros_like(features), torch.zeros_like(masks)
            extension.backward(grad_output, rfeatures, masks, scratch[0], scratch[1],
                               rgrad_input, rgrad_masks, grad_input, grad_masks, *ctx.sizes)
            return grad_input, grad_masks, None, None, None

    return MmcvCarafe.apply
