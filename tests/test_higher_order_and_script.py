"""Double backward (gradient penalties), TorchScript, and a first call that stays cheap."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy import CARAFE, CARAFEPack  # noqa: E402

K, G, S = 3, 2, 2
# fast_mode checks a random projection of each Jacobian, not every column of it
gradgradcheck = functools.partial(torch.autograd.gradgradcheck, fast_mode=True)
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)


@pytest.fixture(params=["pytorch-path", pytest.param("simulator", marks=needs_compiler)])
def backend(request, monkeypatch):
    """The pure-PyTorch CPU path, or the real kernels on the CPU simulator."""
    if request.param == "simulator":
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    return request.param


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 2 * G, 2, 3, dtype=torch.float64, generator=generator)
    masks = torch.rand(1, G * K * K, 2 * S, 3 * S, dtype=torch.float64, generator=generator)
    logits = torch.randn(1, G * K * K * S * S, 2, 3, dtype=torch.float64, generator=generator)
    return features.requires_grad_(), masks.requires_grad_(), logits.requires_grad_()


def test_gradgradcheck_carafe(backend):
    features, masks, _ = _inputs()
    assert gradgradcheck(lambda f, m: carafe_cupy.carafe(f, m, K, G, S), (features, masks))


def test_gradgradcheck_carafe_from_logits(backend):
    # on the simulator the first derivative runs the fused kernels (fp64, k = 3)
    features, _, logits = _inputs()
    assert gradgradcheck(
        lambda f, x: carafe_cupy.carafe_from_logits(f, x, K, G, S), (features, logits)
    )


def test_gradgradcheck_through_the_mmcv_function():
    features, masks, _ = _inputs(seed=1)
    assert gradgradcheck(
        lambda f, m: carafe_cupy.CARAFEFunction.apply(f, m, K, G, S), (features, masks)
    )


def test_gradient_penalty_on_carafepack_matches_between_backends(monkeypatch):
    def penalised_grads():
        torch.manual_seed(0)
        model = CARAFEPack(4, S, up_kernel=K, up_group=G, compressed_channels=4).double()
        torch.nn.init.normal_(model.content_encoder.weight, std=0.3)
        x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
        out = model(x)
        (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        (out.sum() + grad_x.square().sum()).backward()
        return [p.grad for p in model.parameters()]

    expected = penalised_grads()
    if shutil.which("g++") or shutil.which("c++"):
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
        for mine, theirs in zip(penalised_grads(), expected):
            torch.testing.assert_close(mine, theirs)
    assert all(grad is not None and grad.abs().sum() > 0 for grad in expected)


def _script_round_trip(module):
    scripted = torch.jit.script(module)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return scripted, torch.jit.load(buffer)


@pytest.mark.parametrize("fuse_normalizer", [True, False])
def test_torchscript_carafepack(backend, fuse_normalizer):
    torch.manual_seed(0)
    model = CARAFEPack(4, S, up_kernel=K, up_group=G, compressed_channels=4).double()
    torch.nn.init.normal_(model.content_encoder.weight, std=0.3)
    model.fuse_normalizer = fuse_normalizer
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    expected = model(x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    for scripted in _script_round_trip(model):
        out = scripted(x)
        torch.testing.assert_close(out, expected)
        (grad,) = torch.autograd.grad(out.sum(), x)
        torch.testing.assert_close(grad, expected_grad)


def test_torchscript_carafe_checks_and_promotes():
    class Upsampler(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.carafe = CARAFE(K, G, S)

        def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            return self.carafe(features, masks) * 2

    features, masks, _ = _inputs()
    expected = 2 * carafe_cupy.carafe(features, masks.float(), K, G, S)
    for scripted in _script_round_trip(Upsampler()):
        out = scripted(features, masks.float())
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected)
        # the op's ValueError, wrapped by the TorchScript interpreter
        with pytest.raises(RuntimeError, match="ValueError: carafe: masks must have shape"):
            scripted(features, masks[:, :, :-1])


def test_first_cpu_call_does_not_import_dynamo():
    code = """
        import sys, time
        import torch
        import carafe_cupy
        features = torch.randn(1, 4, 8, 8, requires_grad=True)
        masks = torch.rand(1, 9, 16, 16, requires_grad=True)
        carafe_cupy.carafe(features, masks, 3, 1, 2).sum().backward()
        carafe_cupy.CARAFEPack(4, 2, compressed_channels=4)(features).sum().backward()
        assert "torch._dynamo" not in sys.modules, "a first call imported torch._dynamo"
        # torch.compile after eager calls: the ops are still kept out of dynamo's tracing
        compiled = torch.compile(lambda f, m: carafe_cupy.carafe(f, m, 3, 1, 2), backend="eager")
        expected = carafe_cupy.carafe(features, masks, 3, 1, 2)
        torch.testing.assert_close(compiled(features, masks), expected)
        print("ok")
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
