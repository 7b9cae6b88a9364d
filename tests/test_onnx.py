"""The standard-op decomposition, and ONNX export through it, run in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy import CARAFE, CARAFEPack  # noqa: E402
from carafe_cupy._torch import export as _decomposed  # noqa: E402

from cases import assert_close, config_id, config_matrix, make_inputs  # noqa: E402
from naive import naive_carafe  # noqa: E402

OPSET = 20


@pytest.mark.parametrize("config", config_matrix()[::5], ids=config_id)
def test_decomposition_matches_naive(config):
    *_, k, g, s = config
    features, masks, _ = (torch.from_numpy(a) for a in make_inputs(config))
    output = _decomposed.decomposed_forward(features, masks, k, g, s)
    assert output.dtype == torch.float64
    assert_close(output, naive_carafe(features.numpy(), masks.numpy(), k, g, s), "float64", "out")


def test_decomposition_keeps_layout_and_dtype_like_the_op():
    features = torch.randn(2, 4, 5, 3).contiguous(memory_format=torch.channels_last)
    masks = torch.rand(2, 2 * 9, 10, 6)
    for dtype in (torch.float32, torch.bfloat16):
        expected = carafe_cupy.carafe(features.to(dtype), masks.to(dtype), 3, 2, 2)
        output = _decomposed.decomposed_forward(features.to(dtype), masks.to(dtype), 3, 2, 2)
        assert output.dtype == expected.dtype
        assert output.stride() == expected.stride()
        torch.testing.assert_close(output, expected)


def test_decompositions_replace_the_op_in_an_exported_program():
    model = CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=8).eval()
    x = torch.randn(1, 4, 3, 5)
    program = torch.export.export(model, (x,)).run_decompositions(carafe_cupy.decompositions())
    namespaces = {
        node.target.namespace
        for node in program.graph.nodes
        if node.op == "call_function" and hasattr(node.target, "namespace")
    }
    assert namespaces == {"aten"}
    torch.testing.assert_close(program.module()(x), model(x))


def export_and_run(model, inputs):
    """Export through the decomposition; return (ONNX model, onnxruntime outputs)."""
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    program = torch.export.export(model, inputs).run_decompositions(carafe_cupy.decompositions())
    exported = torch.onnx.export(program, inputs, dynamo=True, opset_version=OPSET, verbose=False)
    model_proto = exported.model_proto
    onnx.checker.check_model(model_proto, full_check=True)
    session = onnxruntime.InferenceSession(
        model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = {arg.name: tensor.numpy() for arg, tensor in zip(session.get_inputs(), inputs)}
    return model_proto, session.run(None, feeds)


def assert_standard_onnx(model_proto):
    assert [(o.domain, o.version) for o in model_proto.opset_import] == [("", OPSET)]
    assert not model_proto.functions
    domains = {node.domain for node in model_proto.graph.node}
    assert domains == {""}, f"non-standard domains: {domains}"


# odd scale; one tap; many groups; a kernel wider than the input; scale 1
@pytest.mark.parametrize("k, g, s", [(3, 2, 3), (1, 1, 2), (5, 4, 2), (7, 1, 1)])
def test_onnx_carafe_matches_pytorch(k, g, s):
    torch.manual_seed(0)
    features = torch.randn(2, 4, 5, 3)
    masks = torch.rand(2, g * k * k, 5 * s, 3 * s)
    module = CARAFE(k, g, s)
    model_proto, (output,) = export_and_run(module, (features, masks))
    assert_standard_onnx(model_proto)
    expected = module(features, masks).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


class Reassemble(torch.nn.Module):
    def __init__(self, k: int, g: int, s: int, t: int, d: int):
        super().__init__()
        self.params = (k, g, s, t, d)

    def forward(self, features, kernels):
        return carafe_cupy.reassemble(features, kernels, *self.params)


# (k, G, s, stride, dilation): strided, dilated, both, with upsampling; centers past the edge
@pytest.mark.parametrize("params", [(3, 2, 1, 2, 1), (5, 1, 1, 3, 2), (3, 2, 2, 1, 2)], ids=str)
def test_onnx_reassemble_with_stride_and_dilation_matches_pytorch(params):
    k, g, s, t, d = params
    torch.manual_seed(0)
    features = torch.randn(2, 4, 7, 5)
    kernels = torch.rand(2, g * k * k, -(-7 // t) * s, -(-5 // t) * s)
    module = Reassemble(*params)
    model_proto, (output,) = export_and_run(module, (features, kernels))
    assert_standard_onnx(model_proto)
    np.testing.assert_allclose(output, module(features, kernels).numpy(), rtol=1e-5, atol=1e-5)


def test_onnx_carafepack_matches_pytorch():
    torch.manual_seed(0)
    model = CARAFEPack(8, 2, up_kernel=5, up_group=2, compressed_channels=16).eval()
    # trained-like masks, not the near-uniform ones of the initial content encoder
    torch.nn.init.normal_(model.content_encoder.weight, std=0.1)
    x = torch.randn(1, 8, 6, 7)
    model_proto, (output,) = export_and_run(model, (x,))
    assert_standard_onnx(model_proto)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


class AllEntryPoints(torch.nn.Module):
    """The functional op, the CARAFE module and CARAFEPack (fused path too) in one graph."""

    def __init__(self, fused: bool):
        super().__init__()
        self.encoder = torch.nn.Conv2d(4, 2 * 9 * 4, 1)
        self.carafe = CARAFE(3, 2, 2)
        self.pack = CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=4)
        torch.nn.init.normal_(self.pack.content_encoder.weight, std=0.3)
        self.fused = fused

    def forward(self, x):
        masks = torch.nn.functional.pixel_shuffle(self.encoder(x), 2).softmax(dim=1)
        functional = carafe_cupy.carafe(x, masks, 3, 2, 2)
        if self.fused:
            # what CARAFEPack runs where kernels are used (GPU, simulator)
            logits = self.pack.content_encoder(self.pack.channel_compressor(x))
            packed = carafe_cupy.carafe_from_logits(x, logits, 3, 2, 2)
        else:
            packed = self.pack(x)
        return functional, self.carafe(x, masks), packed


@pytest.mark.parametrize(
    "dynamo",
    [
        True,
        # The deprecated TorchScript exporter, which deployment scripts still call; tested
        # here only. Its notice that a strided Slice is not constant-folded is expected.
        pytest.param(
            False,
            marks=pytest.mark.filterwarnings(
                "ignore:Constant folding - Only steps=1 can be constant folded:UserWarning"
            ),
        ),
    ],
    ids=["dynamo-exporter", "torchscript-exporter"],
)
def test_plain_onnx_export_with_dynamic_sizes(dynamo, tmp_path):
    """torch.onnx.export(model, args, f) as deployment scripts call it, no extra step."""
    torch.manual_seed(0)
    model = AllEntryPoints(fused=dynamo).eval()
    # the second shape was not seen at export
    assert_plain_export_runs(model, dynamo, tmp_path, ((2, 4, 3, 5), (1, 4, 6, 2)))


def test_onnx_export_from_a_batch_of_one_keeps_the_batch_dynamic(tmp_path):
    """A size of 1 at export must not be fixed to 1 in the graph."""
    torch.manual_seed(0)
    model = AllEntryPoints(fused=True).eval()
    assert_plain_export_runs(model, True, tmp_path, ((1, 4, 3, 5), (2, 4, 4, 3)))


def assert_plain_export_runs(model, dynamo: bool, tmp_path, shapes) -> None:
    """Export with batch, height and width dynamic, check the model is standard ONNX,
    and compare every output with PyTorch in onnxruntime at each of ``shapes``."""
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    x = torch.randn(shapes[0])
    if dynamo:
        dim = torch.export.Dim
        sizes = {"dynamic_shapes": ({0: dim("batch"), 2: dim("height"), 3: dim("width")},)}
    else:
        sizes = {"input_names": ["x"], "dynamic_axes": {"x": {0: "n", 2: "h", 3: "w"}}}
    torch.onnx.export(model, (x,), str(path), dynamo=dynamo, **sizes)

    model_proto = onnx.load(str(path))
    onnx.checker.check_model(model_proto, full_check=True)
    assert {node.domain for node in model_proto.graph.node} <= {"", "ai.onnx"}
    assert not model_proto.functions
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in shapes:
        y = torch.randn(shape)
        outputs = session.run(None, {session.get_inputs()[0].name: y.numpy()})
        with torch.no_grad():
            expected = model(y)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for output, reference in zip(outputs, expected):
            np.testing.assert_allclose(output, reference.numpy(), rtol=1e-5, atol=1e-5)


# The current exporter, called as documented: nothing deprecated on the way.
@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_onnx_export_of_the_fused_carafepack_path(monkeypatch, tmp_path):
    """CARAFEPack's own fused branch (taken where kernels run) exports the same graph."""
    from carafe_cupy import nn as carafe_nn

    monkeypatch.setattr(carafe_nn, "uses_kernels", lambda device: True)
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=4).eval()
    torch.nn.init.normal_(model.content_encoder.weight, std=0.3)
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")
    x = torch.randn(1, 4, 3, 4)
    path = tmp_path / "carafepack.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    monkeypatch.undo()
    with torch.no_grad():
        np.testing.assert_allclose(output, model(x).numpy(), rtol=1e-5, atol=1e-5)
