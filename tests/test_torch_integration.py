"""CARAFEPack against mmcv's layout, and the op under fake tensors, opcheck,
torch.compile, torch.export and autocast."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch._subclasses import FakeTensorMode  # noqa: E402

import carafe_cupy  # noqa: E402
from carafe_cupy import CARAFE, CARAFEPack  # noqa: E402

from cases import assert_close  # noqa: E402
from naive import naive_carafe  # noqa: E402

forward_op = torch.ops.carafe_cupy.carafe_forward.default
backward_op = torch.ops.carafe_cupy.carafe_backward.default

skip_without_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"
)
needs_cuda = [pytest.mark.gpu, skip_without_cuda]


def mmcv_state_dict(channels, scale, up_kernel, up_group, encoder_kernel, compressed, seed=0):
    """An mmcv ``CARAFEPack`` state_dict built by hand: its key names and shapes."""
    generator = torch.Generator().manual_seed(seed)
    encoder_out = up_kernel * up_kernel * up_group * scale * scale

    def random(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "channel_compressor.weight": random(compressed, channels, 1, 1),
        "channel_compressor.bias": random(compressed),
        "content_encoder.weight": random(encoder_out, compressed, encoder_kernel, encoder_kernel),
        "content_encoder.bias": random(encoder_out),
    }


@pytest.mark.parametrize(
    "encoder_kernel, encoder_dilation, up_kernel, up_group, scale",
    [(3, 1, 5, 1, 2), (3, 2, 3, 2, 2), (5, 1, 3, 4, 3), (1, 1, 1, 1, 2)],
)
def test_carafepack_loads_mmcv_state_dict_and_matches_plain_ops(
    encoder_kernel, encoder_dilation, up_kernel, up_group, scale
):
    channels, compressed = 8, 6
    state = mmcv_state_dict(channels, scale, up_kernel, up_group, encoder_kernel, compressed)
    pack = CARAFEPack(
        channels,
        scale,
        up_kernel=up_kernel,
        up_group=up_group,
        encoder_kernel=encoder_kernel,
        encoder_dilation=encoder_dilation,
        compressed_channels=compressed,
    ).double()
    pack.load_state_dict(state, strict=True)

    x = torch.randn(2, channels, 5, 4, dtype=torch.float64)
    output = pack(x).detach()

    # the same network from plain torch ops, with the naive reassembly
    compressed_x = F.conv2d(x, state["channel_compressor.weight"], state["channel_compressor.bias"])
    logits = F.conv2d(
        compressed_x,
        state["content_encoder.weight"],
        state["content_encoder.bias"],
        padding=(encoder_kernel - 1) * encoder_dilation // 2,
        dilation=encoder_dilation,
    )
    logits = F.pixel_shuffle(logits, scale)
    n, mask_channels, height, width = logits.shape
    taps = up_kernel * up_kernel
    masks = logits.view(n, mask_channels // taps, taps, height, width).softmax(dim=2)
    masks = masks.reshape(n, mask_channels, height, width)
    expected = naive_carafe(x.numpy(), masks.numpy(), up_kernel, up_group, scale)
    assert output.shape == (2, channels, 5 * scale, 4 * scale)
    assert_close(output, expected, "float64", "CARAFEPack")


def test_carafepack_rejects_foreign_state_dict():
    pack = CARAFEPack(4, 2, up_kernel=3, compressed_channels=4)
    state = mmcv_state_dict(4, 2, 3, 1, 3, 4)
    state["encoder.weight"] = state.pop("content_encoder.weight")
    with pytest.raises(RuntimeError, match="content_encoder.weight"):
        pack.load_state_dict(state, strict=True)


def test_carafepack_init_statistics():
    torch.manual_seed(0)
    channels, compressed, up_kernel, scale = 64, 64, 5, 2
    pack = CARAFEPack(channels, scale, up_kernel=up_kernel, compressed_channels=compressed)
    assert torch.count_nonzero(pack.channel_compressor.bias) == 0
    assert torch.count_nonzero(pack.content_encoder.bias) == 0

    # content encoder: normal(0, 0.001)
    encoder = pack.content_encoder.weight.detach()
    assert abs(encoder.std().item() - 0.001) < 0.05 * 0.001
    assert abs(encoder.mean().item()) < 0.05 * 0.001

    # channel compressor: xavier uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out))
    compressor = pack.channel_compressor.weight.detach()
    bound = math.sqrt(6.0 / (channels + compressed))
    assert compressor.abs().max().item() <= bound
    assert abs(compressor.std().item() - bound / math.sqrt(3.0)) < 0.05 * bound


def layouts():
    features = torch.randn(2, 4, 5, 3)
    masks = torch.rand(2, 2 * 9, 10, 6)
    return {
        "contiguous": (features, masks),
        "channels_last": (
            features.contiguous(memory_format=torch.channels_last),
            masks.contiguous(memory_format=torch.channels_last),
        ),
        "mixed": (features.contiguous(memory_format=torch.channels_last), masks),
        "sliced": (torch.randn(2, 4, 5, 6)[..., ::2], masks.transpose(2, 3).contiguous().mT),
    }


@pytest.mark.parametrize("layout", list(layouts()))
def test_fake_and_meta_strides_match_real(layout):
    features, masks = layouts()[layout]
    params = (3, 2, 2)
    grad_output = torch.randn(2, 4, 10, 6).contiguous(memory_format=torch.channels_last)
    real = forward_op(features, masks, *params)
    real_grads = backward_op(grad_output, features, masks, *params)
    with FakeTensorMode() as mode:
        fake_inputs = [mode.from_tensor(t) for t in (grad_output, features, masks)]
        fake = forward_op(*fake_inputs[1:], *params)
        fake_grads = backward_op(*fake_inputs, *params)
    meta = forward_op(features.to("meta"), masks.to("meta"), *params)
    assert real.shape == fake.shape == meta.shape
    assert real.stride() == fake.stride() == meta.stride()
    assert real.dtype == fake.dtype == meta.dtype
    for real_grad, fake_grad in zip(real_grads, fake_grads):
        assert real_grad.stride() == fake_grad.stride()
    if layout in ("channels_last", "mixed"):
        assert real.is_contiguous(memory_format=torch.channels_last)


def opcheck_cases(device):
    cases = []
    # opcheck is slow; the fake-stride test above covers the other layouts
    for name in ("contiguous", "channels_last"):
        features, masks = layouts()[name]
        features = features.to(device, torch.float64).requires_grad_()
        masks = masks.to(device, torch.float64).requires_grad_()
        cases.append((name, features, masks))
    return cases


def run_opcheck(device):
    for name, features, masks in opcheck_cases(device):
        params = (3, 2, 2)
        grad_output = torch.randn(2, 4, 10, 6, dtype=torch.float64, device=device)
        for op, args in (
            (forward_op, (features, masks, *params)),
            (backward_op, (grad_output, features.detach(), masks.detach(), *params)),
        ):
            result = torch.library.opcheck(op, args)
            failures = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
            assert not failures, f"{op} with {name} inputs: {failures}"


def test_opcheck_cpu():
    run_opcheck("cpu")


@pytest.mark.gpu
@skip_without_cuda
def test_opcheck_cuda():
    run_opcheck("cuda")


class UsesBoth(torch.nn.Module):
    """CARAFEPack, then CARAFE with masks computed from the result."""

    def __init__(self):
        super().__init__()
        self.pack = CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=8)
        self.to_masks = torch.nn.Conv2d(4, 9, 1)
        self.carafe = CARAFE(3, 1, 1)

    def forward(self, x):
        upsampled = self.pack(x)
        masks = self.to_masks(upsampled).softmax(dim=1)
        return self.carafe(upsampled, masks)


def test_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    assert_compiled_matches_eager(UsesBoth(), torch.randn(2, 4, 5, 6))


def assert_compiled_matches_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """torch.compile(fullgraph, aot_eager): the same output and gradients as eager."""
    eager_x = x.clone().requires_grad_()
    eager_out = model(eager_x)
    eager_out.square().sum().backward()
    eager_grads = [eager_x.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled_x = x.clone().requires_grad_()
    compiled_out = compiled(compiled_x)
    compiled_out.square().sum().backward()
    compiled_grads = [compiled_x.grad] + [p.grad for p in model.parameters()]

    torch.testing.assert_close(compiled_out, eager_out)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad)


def test_compile_inductor_forward():
    torch.manual_seed(0)
    model = CARAFEPack(4, 2, up_kernel=3, compressed_channels=4).eval()
    x = torch.randn(1, 4, 3, 3)
    torch._dynamo.reset()
    # one compile worker: no process pool to start on a small CI machine
    with torch._inductor.config.patch(compile_threads=1), torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), model(x))


def test_export_carafepack_runs_and_matches():
    torch.manual_seed(0)
    model = CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=8).eval()
    program = torch.export.export(model, (torch.randn(2, 4, 5, 6),))
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert forward_op in targets
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(program.module()(x), model(x))


def autocast_inputs():
    torch.manual_seed(0)
    features = torch.randn(2, 4, 5, 6)
    masks = torch.rand(2, 18, 10, 12)
    return features, masks


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.float16, marks=needs_cuda),
        pytest.param("cuda", torch.bfloat16, marks=needs_cuda),
    ],
)
def test_autocast_returns_autocast_dtype(device, dtype):
    features, masks = (t.to(device).requires_grad_() for t in autocast_inputs())
    module = CARAFE(3, 2, 2)
    pack = CARAFEPack(4, 2, up_kernel=3, up_group=2, compressed_channels=8).to(device)
    with torch.autocast(device, dtype=dtype):
        output = module(features, masks)
        packed = pack(features)
    assert output.dtype == packed.dtype == dtype
    expected = module(features.to(dtype), masks.to(dtype))
    torch.testing.assert_close(output, expected)
    (output.float().sum() + packed.float().sum()).backward()
    # gradients come back in the leaves' own dtype
    assert features.grad.dtype == masks.grad.dtype == torch.float32


def test_autocast_and_type_promotion():
    features, masks = autocast_inputs()
    params = (3, 2, 2)
    # outside autocast: ordinary promotion
    assert carafe_cupy.carafe(features, masks.bfloat16(), *params).dtype == torch.float32
    assert carafe_cupy.carafe(features.half(), masks.bfloat16(), *params).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # autocast casts every eligible floating input, so the mix no longer matters
        assert carafe_cupy.carafe(features, masks.half(), *params).dtype == torch.bfloat16
        # float64 is not eligible, and promotion keeps the op in float64
        assert carafe_cupy.carafe(features.double(), masks, *params).dtype == torch.float64
        # the op itself honours autocast too, not only the Python entry point
        assert forward_op(features, masks, *params).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert carafe_cupy.carafe(features, masks, *params).dtype == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert carafe_cupy.carafe(features, masks, *params).dtype == torch.float32


def test_autocast_under_compile():
    features, masks = autocast_inputs()

    def upsample(features, masks):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return carafe_cupy.carafe(features, masks, 3, 2, 2)

    torch._dynamo.reset()
    compiled = torch.compile(upsample, fullgraph=True, backend="aot_eager")
    output = compiled(features, masks)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output, upsample(features, masks))
