"""Involution and CARAFEDownPack against unfold formulations, checkpoints, bad arguments."""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from carafe_cupy import CARAFEDownPack, Involution  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_baselines():
    name = "carafe_bench_baselines"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / "baselines.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


reassemble_unfold = _load_baselines().reassemble_unfold
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


class AuthorsInvolution(nn.Module):
    """The authors' RedNet involution, written out with plain layers and nn.Unfold:
    ConvModule's conv / bn / activate as an ordered Sequential, floor pooling (theirs)
    unless ``ceil_mode``."""

    def __init__(self, channels, kernel_size, stride, dilation=1, ceil_mode=False):
        super().__init__()
        self.k, self.stride, self.groups = kernel_size, stride, channels // 16
        reduced = channels // 4
        self.conv1 = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(channels, reduced, 1, bias=False),
                bn=nn.BatchNorm2d(reduced),
                activate=nn.ReLU(),
            )
        )
        self.conv2 = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(reduced, kernel_size**2 * self.groups, 1))
        )
        self.avgpool = nn.AvgPool2d(stride, stride, ceil_mode=ceil_mode)
        self.unfold = nn.Unfold(kernel_size, dilation, dilation * (kernel_size - 1) // 2, stride)

    def forward(self, x):
        weight = self.conv2(self.conv1(x if self.stride == 1 else self.avgpool(x)))
        b, _, h, w = weight.shape
        weight = weight.view(b, self.groups, 1, self.k**2, h, w)
        cols = self.unfold(x).view(b, self.groups, 16, self.k**2, h, w)
        return (weight * cols).sum(dim=3).view(b, -1, h, w)


def authors_state_dict(channels, kernel_size, generator):
    """A checkpoint's involution entries: the authors' key names and shapes."""
    groups, reduced = channels // 16, channels // 4

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "conv1.conv.weight": rand(reduced, channels, 1, 1),
        "conv1.bn.weight": rand(reduced),
        "conv1.bn.bias": rand(reduced),
        "conv1.bn.running_mean": rand(reduced),
        "conv1.bn.running_var": rand(reduced).abs() + 0.5,
        "conv1.bn.num_batches_tracked": torch.tensor(7),
        "conv2.conv.weight": rand(kernel_size**2 * groups, reduced, 1, 1) * 0.1,
        "conv2.conv.bias": rand(kernel_size**2 * groups),
    }


@pytest.mark.parametrize("stride", [1, 2])
def test_authors_checkpoint_loads_strictly_and_gives_their_output(stride):
    generator = torch.Generator().manual_seed(stride)
    state = authors_state_dict(64, 7, generator)
    ours = Involution(64, kernel_size=7, stride=stride)
    assert set(ours.state_dict()) == set(state)
    ours.load_state_dict(state, strict=True)
    theirs = AuthorsInvolution(64, 7, stride)
    theirs.load_state_dict(state, strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 64, 12, 10, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def _grads(module, x):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = module(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    named = {name: p.grad for name, p in module.named_parameters()}
    return out.detach(), x.grad, named


def assert_same_forward_and_grads(ours, reference, x):
    out, grad_x, grads = _grads(ours, x)
    ref_out, ref_grad_x, ref_grads = _grads(reference, x)
    tol = TOLERANCE[x.dtype]
    assert out.shape == ref_out.shape
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=tol, atol=tol)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "kernel_size, stride, dilation, size",
    [
        (7, 1, 1, (9, 8)),
        (7, 2, 1, (10, 12)),
        (3, 2, 1, (6, 4)),
        (5, 1, 2, (7, 9)),
        (3, 3, 1, (9, 6)),
        (5, 2, 2, (8, 10)),
    ],
)
def test_involution_matches_the_authors_unfold_module(dtype, kernel_size, stride, dilation, size):
    torch.manual_seed(kernel_size * 10 + stride)
    ours = Involution(32, kernel_size, stride, dilation=dilation).to(dtype)
    reference = AuthorsInvolution(32, kernel_size, stride, dilation).to(dtype)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 32, *size, dtype=dtype)
    assert_same_forward_and_grads(ours, reference, x)  # training mode: batch statistics
    ours.eval(), reference.eval()
    assert_same_forward_and_grads(ours, reference, x)


@pytest.mark.parametrize("stride, size", [(2, (7, 9)), (3, (8, 5)), (2, (1, 2))])
def test_involution_sizes_not_divisible_by_the_stride(stride, size):
    torch.manual_seed(stride)
    ours = Involution(16, 3, stride, group_channels=8, reduction_ratio=2).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    out_size = tuple(-(-side // stride) for side in size)
    assert ours.kernels(x).shape[-2:] == out_size
    # ceil pooling: the last row and column average only what the window covers
    pooled = nn.functional.avg_pool2d(x, stride, stride, ceil_mode=True)
    corner = x[..., (out_size[0] - 1) * stride :, (out_size[1] - 1) * stride :]
    torch.testing.assert_close(pooled[..., -1, -1], corner.mean(dim=(-2, -1)))

    expected = reassemble_unfold(x, ours.conv2(ours.conv1(pooled)), 3, 2, stride)
    out = ours(x)
    assert out.shape == (2, 16, *out_size)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def downpack_unfold(pack, x):
    """CARAFEDownPack's composition written out: compressor, strided encoder, softmax over
    each group's taps, unfold reassembly."""
    k, g = pack.down_kernel, pack.down_group
    logits = pack.content_encoder(pack.channel_compressor(x))
    n, _, h, w = logits.shape
    kernels = logits.view(n, g, k * k, h, w).softmax(dim=2).view(n, g * k * k, h, w)
    return reassemble_unfold(x, kernels, k, g, pack.stride)


class DownPackByUnfold(nn.Module):
    def __init__(self, pack):
        super().__init__()
        self.pack = pack

    def forward(self, x):
        return downpack_unfold(self.pack, x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "stride, kernel, group, encoder, size",
    [(2, 5, 1, 3, (8, 10)), (2, 3, 2, 3, (7, 9)), (3, 5, 4, 1, (10, 8)), (1, 3, 2, 5, (5, 6))],
)
def test_downpack_matches_its_unfold_composition(dtype, stride, kernel, group, encoder, size):
    torch.manual_seed(stride + kernel)
    pack = CARAFEDownPack(8, stride, kernel, group, encoder, compressed_channels=6).to(dtype)
    nn.init.normal_(pack.content_encoder.weight, std=0.3)  # trained-like, not near-uniform
    x = torch.randn(2, 8, *size, dtype=dtype)
    out = pack(x)
    assert out.shape == (2, 8, -(-size[0] // stride), -(-size[1] // stride))
    kernels = pack.kernels(x)
    sums = kernels.view(2, group, kernel * kernel, *out.shape[-2:]).sum(dim=2)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    reference = DownPackByUnfold(pack)
    out, grad_x, grads = _grads(pack, x)
    ref_out, ref_grad_x, ref_grads = _grads(reference, x)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(grad_x, ref_grad_x, rtol=tol, atol=tol)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[f"pack.{name}"], rtol=tol, atol=tol)


def test_downpack_starts_close_to_a_box_filter():
    pack = CARAFEDownPack(4, 2, down_kernel=3, compressed_channels=4)
    assert pack.content_encoder.weight.std() < 0.01
    assert pack.content_encoder.bias.abs().max() == 0
    kernels = pack.kernels(torch.randn(1, 4, 6, 6))
    torch.testing.assert_close(kernels, torch.full_like(kernels, 1 / 9), rtol=0, atol=1e-2)


def test_involution_initialisation_follows_convmodule():
    module = Involution(64)
    assert module.conv1.conv.bias is None and module.conv2.conv.bias is not None
    assert module.conv2.conv.bias.abs().max() == 0
    assert torch.all(module.conv1.bn.weight == 1) and torch.all(module.conv1.bn.bias == 0)
    fan_out = module.conv2.conv.out_channels  # 1x1 kernels: fan_out is the output channels
    assert (
        abs(module.conv2.conv.weight.std().item() - (2 / fan_out) ** 0.5)
        < 0.2 * (2 / fan_out) ** 0.5
    )
    assert module.groups == 4 and module.conv2.conv.out_channels == 4 * 49


@pytest.mark.parametrize(
    "make",
    [
        lambda: Involution(16, 3, 2, group_channels=8),
        lambda: CARAFEDownPack(8, 2, 3, 2, compressed_channels=4),
    ],
)
def test_channels_last_and_batch_of_one_agree_with_contiguous(make):
    torch.manual_seed(0)
    module = make().eval()
    x = torch.randn(2, module.channels, 7, 6)
    with torch.no_grad():
        expected = module(x)
        channels_last = module(x.contiguous(memory_format=torch.channels_last))
        first = module(x[:1])
    torch.testing.assert_close(channels_last, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first, expected[:1], rtol=1e-5, atol=1e-5)


BAD_ARGUMENTS = [
    (Involution, dict(channels=0), ValueError, "Involution: channels must be >= 1, got 0"),
    (Involution, dict(channels=32, kernel_size=4), ValueError, "kernel_size must be odd, got 4"),
    (Involution, dict(channels=32, stride=0), ValueError, "stride must be >= 1, got 0"),
    (Involution, dict(channels=32, stride=2.0), TypeError, r"stride must be an int, got float"),
    (Involution, dict(channels=24), ValueError, r"group_channels \(16\) must divide channels"),
    (Involution, dict(channels=32, group_channels=0), ValueError, "group_channels must be >="),
    (Involution, dict(channels=32, reduction_ratio=64), ValueError, r"reduction_ratio \(64\)"),
    (Involution, dict(channels=32, dilation=0), ValueError, "dilation must be >= 1, got 0"),
    (CARAFEDownPack, dict(channels=8, stride=0), ValueError, "CARAFEDownPack: stride must be"),
    (CARAFEDownPack, dict(channels=8, down_kernel=2), ValueError, "down_kernel must be odd"),
    (CARAFEDownPack, dict(channels=8, down_group=3), ValueError, r"down_group \(3\) must divide"),
    (CARAFEDownPack, dict(channels=8, encoder_kernel=0), ValueError, "encoder_kernel must be"),
    (CARAFEDownPack, dict(channels=8, compressed_channels=0), ValueError, "compressed_channels"),
    (CARAFEDownPack, dict(channels="8"), TypeError, "channels must be an int, got str"),
]


@pytest.mark.parametrize("cls, kwargs, error, match", BAD_ARGUMENTS)
def test_bad_constructor_arguments_name_the_argument(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def small_modules():
    torch.manual_seed(0)
    involution = Involution(16, 3, 2, group_channels=8, reduction_ratio=2).eval()
    downsample = CARAFEDownPack(8, 2, 3, 2, compressed_channels=4).eval()
    nn.init.normal_(downsample.content_encoder.weight, std=0.3)
    return {"involution": involution, "downsample": downsample}


@pytest.mark.parametrize("name", ["involution", "downsample"])
def test_batch_of_zero(name):
    module = small_modules()[name]
    if name == "downsample":
        module.train()  # no BatchNorm: training mode takes an empty batch too
    x = torch.randn(0, module.channels, 7, 6, requires_grad=True)
    out = module(x)
    assert out.shape == (0, module.channels, 4, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("name", ["involution", "downsample"])
def test_torchscript_gives_the_same_output(name):
    module = small_modules()[name]
    x = torch.randn(2, module.channels, 7, 6)
    scripted = torch.jit.script(module)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), module(x))


@pytest.mark.parametrize("name", ["involution", "downsample"])
def test_export_and_onnx_through_the_decomposition(name):
    from test_onnx import assert_standard_onnx, export_and_run

    import carafe_cupy

    module = small_modules()[name]
    x = torch.randn(1, module.channels, 7, 9)
    with torch.no_grad():
        expected = module(x)
    program = torch.export.export(module, (x,)).run_decompositions(carafe_cupy.decompositions())
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("carafe_cupy" in target for target in targets)
    torch.testing.assert_close(program.module()(x), expected)
    model_proto, (output,) = export_and_run(module, (x,))
    assert_standard_onnx(model_proto)
    torch.testing.assert_close(torch.from_numpy(output), expected, rtol=1e-5, atol=1e-5)
