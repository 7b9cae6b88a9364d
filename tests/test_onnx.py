"""The standard-op decomposition, and ONNX export through it, run in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy import CARAFE, CARAFEPack, _decomposed  # noqa: E402

from cases import assert_close, config_id, config_matrix, make_inputs  # noqa: E402
from naive import naive_carafe  # noqa: E402

OPSET = 20


@pytest.mark.parametrize("config", config_matrix()[::5], ids=config_id)
def test_decomposition_matches_naive(config):
    *_, k, g, s = config
    features, masks, _ = (torch.from_numpy(a) for a in make_inputs(config))
    output = _decomposed.carafe_forward(features, masks, k, g, s)
    assert output.dtype == torch.float64
    assert_close(output, naive_carafe(features.numpy(), masks.numpy(), k, g, s), "float64", "out")


def test_decomposition_keeps_layout_and_dtype_like_the_op():
    features = torch.randn(2, 4, 5, 3).contiguous(memory_format=torch.channels_last)
    masks = torch.rand(2, 2 * 9, 10, 6)
    for dtype in (torch.float32, torch.bfloat16):
        expected = carafe_cupy.carafe(features.to(dtype), masks.to(dtype), 3, 2, 2)
        output = _decomposed.carafe_forward(features.to(dtype), masks.to(dtype), 3, 2, 2)
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


@pytest.mark.parametrize("k, g, s", [(3, 2, 3)])
def test_onnx_carafe_matches_pytorch(k, g, s):
    torch.manual_seed(0)
    features = torch.randn(2, 4, 5, 3)
    masks = torch.rand(2, g * k * k, 5 * s, 3 * s)
    module = CARAFE(k, g, s)
    model_proto, (output,) = export_and_run(module, (features, masks))
    assert_standard_onnx(model_proto)
    expected = module(features, masks).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


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
