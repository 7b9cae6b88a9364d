"""reassemble in torch's machinery: fake/meta kernels, opcheck, torch.compile,
autocast, torch.export with the standard-op decomposition, ONNX in onnxruntime,
and clear errors for bad stride, dilation and kernel shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_onnx import assert_plain_export_runs  # noqa: E402
from test_torch_integration import assert_compiled_matches_eager  # noqa: E402
from torch._subclasses import FakeTensorMode  # noqa: E402

import carafe_cupy  # noqa: E402
from carafe_cupy._torch import export as _decomposed  # noqa: E402

from cases import assert_close, make_inputs  # noqa: E402
from naive import naive_carafe  # noqa: E402

forward_op = torch.ops.carafe_cupy.carafe_forward.default
backward_op = torch.ops.carafe_cupy.carafe_backward.default

# (k, G, s, t, d) beyond CARAFE
PARAMS = [(3, 2, 1, 2, 1), (5, 1, 1, 3, 2), (3, 2, 2, 1, 2)]


def inputs(k, g, s, t, d, height=7, width=5, dtype=torch.float64, seed=0):
    """features (2, 4, H, W), kernels and grad_output of the right sizes."""
    config = (2, 4, height, width, k, g, s, t, d)
    return tuple(torch.from_numpy(a).to(dtype) for a in make_inputs(config, seed))


@pytest.mark.parametrize("params", PARAMS, ids=str)
def test_fake_and_meta_shapes_and_strides_match_real(params):
    features, kernels, grad_output = inputs(*params)
    features = features.contiguous(memory_format=torch.channels_last)
    real = forward_op(features, kernels, *params)
    real_grads = backward_op(grad_output, features, kernels, *params)
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in (grad_output, features, kernels)]
        fake = forward_op(*fakes[1:], *params)
        fake_grads = backward_op(*fakes, *params)
    meta = forward_op(features.to("meta"), kernels.to("meta"), *params)
    assert real.shape == fake.shape == meta.shape == grad_output.shape
    assert real.stride() == fake.stride() == meta.stride()
    for real_grad, fake_grad in zip(real_grads, fake_grads):
        assert real_grad.shape == fake_grad.shape and real_grad.stride() == fake_grad.stride()


def test_opcheck_with_stride_and_dilation():
    for params in PARAMS[:2]:
        features, kernels, grad_output = inputs(*params)
        for op, args in (
            (forward_op, (features.requires_grad_(), kernels.requires_grad_(), *params)),
            (backward_op, (grad_output, features.detach(), kernels.detach(), *params)),
        ):
            result = torch.library.opcheck(op, args)
            failures = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
            assert not failures, f"{op} {params}: {failures}"


class Downsampler(torch.nn.Module):
    """Kernels from a strided conv, softmax over taps, then reassembly at that stride."""

    def __init__(self, channels=4, k=3, groups=2, stride=2, dilation=2):
        super().__init__()
        self.params = (k, groups, 1, stride, dilation)
        self.encoder = torch.nn.Conv2d(channels, groups * k * k, 3, stride=stride, padding=1)
        torch.nn.init.normal_(self.encoder.weight, std=0.3)

    def forward(self, x):
        logits = self.encoder(x)
        n, _, h, w = logits.shape
        k, g = self.params[:2]
        kernels = logits.view(n, g, k * k, h, w).softmax(dim=2).view(n, g * k * k, h, w)
        return carafe_cupy.reassemble(x, kernels, *self.params)


def test_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    assert_compiled_matches_eager(Downsampler(), torch.randn(2, 4, 7, 6))


def test_autocast_casts_and_promotes_like_carafe():
    features, kernels, _ = inputs(3, 2, 1, 2, 1, dtype=torch.float32)
    features.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = carafe_cupy.reassemble(features, kernels.half(), 3, 2, stride=2)
        # the op itself honours autocast too, not only the Python entry point
        assert forward_op(features, kernels, 3, 2, 1, 2, 1).dtype == torch.bfloat16
        assert carafe_cupy.reassemble(features.double(), kernels, 3, 2, stride=2).dtype == (
            torch.float64
        )
    assert output.dtype == torch.bfloat16
    expected = carafe_cupy.reassemble(features.bfloat16(), kernels.bfloat16(), 3, 2, stride=2)
    torch.testing.assert_close(output, expected)
    output.float().sum().backward()
    assert features.grad.dtype == torch.float32
    assert carafe_cupy.reassemble(features, kernels.bfloat16(), 3, 2, 1, 2).dtype == torch.float32


@pytest.mark.parametrize("params", PARAMS, ids=str)
def test_decomposition_matches_naive(params):
    features, kernels, _ = inputs(*params)
    output = _decomposed.decomposed_forward(features, kernels, *params)
    expected = naive_carafe(features.numpy(), kernels.numpy(), *params)
    assert_close(output, expected, "float64", "decomposed")


def test_export_then_decompositions_leave_only_aten_and_match():
    torch.manual_seed(0)
    model = Downsampler().eval()
    x = torch.randn(1, 4, 7, 6)
    program = torch.export.export(model, (x,))
    assert forward_op in {node.target for node in program.graph.nodes}
    decomposed = program.run_decompositions(carafe_cupy.decompositions())
    namespaces = {
        node.target.namespace
        for node in decomposed.graph.nodes
        if node.op == "call_function" and hasattr(node.target, "namespace")
    }
    assert namespaces == {"aten"}
    torch.testing.assert_close(decomposed.module()(x), model(x))


def test_plain_onnx_export_with_dynamic_sizes_runs_in_onnxruntime(tmp_path):
    """The current (torch.export-based) exporter; the deprecated TorchScript one is tested
    once, on CARAFE, in test_onnx.py."""
    torch.manual_seed(0)
    model = Downsampler().eval()
    # the second shape was not seen at export
    assert_plain_export_runs(model, True, tmp_path, ((2, 4, 7, 6), (1, 4, 8, 5)))


F, K = torch.randn(1, 4, 5, 6), torch.rand(1, 18, 3, 3)  # k 3, G 2, stride 2

BAD = [
    # (args after features and kernels, kwargs, error type, words the message must contain)
    ((3, 2), {"stride": 0}, ValueError, ["reassemble", "stride", ">= 1", "0"]),
    ((3, 2), {"stride": -2}, ValueError, ["stride", ">= 1", "-2"]),
    ((3, 2), {"stride": 2.0}, TypeError, ["stride", "int", "float"]),
    ((3, 2), {"stride": True}, TypeError, ["stride", "int", "bool"]),
    ((3, 2), {"stride": 2, "dilation": 0}, ValueError, ["dilation", ">= 1", "0"]),
    ((3, 2), {"stride": 2, "dilation": 1.5}, TypeError, ["dilation", "int", "1.5"]),
    ((3, 2), {"stride": 2, "dilation": "2"}, TypeError, ["dilation", "int", "str"]),
    ((3, 2, 2), {"stride": 2}, ValueError, ["scale_factor=2", "stride=2", "at most one"]),
    ((3, 2), {}, ValueError, ["kernels", "(1, 18, 5, 6)", "(1, 18, 3, 3)"]),
    ((3, 2), {"stride": 3}, ValueError, ["kernels", "ceil(H/t)", "(1, 18, 2, 2)", "stride=3"]),
    ((3, 1), {"stride": 2}, ValueError, ["kernels", "(1, 9, 3, 3)", "(1, 18, 3, 3)"]),
    ((5, 2), {"stride": 2}, ValueError, ["kernels", "(1, 50, 3, 3)"]),
    ((3, 3), {"stride": 2}, ValueError, ["group_size", "divide", "C=4"]),
    ((4, 2), {"stride": 2}, ValueError, ["kernel_size", "odd"]),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: " ".join(case[-1])[:40])
def test_bad_arguments_raise_clear_errors(case):
    args, kwargs, error, words = case
    for call in (
        lambda: carafe_cupy.reassemble(F, K, *args, **kwargs),
        lambda: carafe_cupy.reassemble_backward(torch.ones(1, 4, 3, 3), F, K, *args, **kwargs),
    ):
        with pytest.raises(error) as info:
            call()
        for word in words:
            assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


def test_bad_tensors_name_the_kernels_argument():
    with pytest.raises(TypeError, match=r"reassemble: kernels must have a floating dtype.*int64"):
        carafe_cupy.reassemble(F, K.long(), 3, 2, stride=2)
    mixed = r"reassemble: inputs must all be torch tensors.*kernels is numpy.ndarray"
    with pytest.raises(TypeError, match=mixed):
        carafe_cupy.reassemble(F, K.numpy(), 3, 2, stride=2)
    with pytest.raises(ValueError, match=r"reassemble: kernels must be 4-D"):
        carafe_cupy.reassemble(F, K[0], 3, 2, stride=2)
    shape = r"reassemble_backward: grad_output must have the output's shape \(1, 4, 3, 3\)"
    with pytest.raises(ValueError, match=shape):
        carafe_cupy.reassemble_backward(torch.ones(1, 4, 5, 6), F, K, 3, 2, stride=2)
    # the op checks its arguments too, for callers of torch.ops (TorchScript among them)
    with pytest.raises(ValueError, match="at most one of scale_factor and stride"):
        forward_op(F, K, 3, 2, 2, 2, 1)
