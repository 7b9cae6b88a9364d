"""DistributedDataParallel training (gloo on the CPU; NCCL and gloo on GPUs) and
CUDA graph capture of forward and backward (GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime  # noqa: E402

import ddp_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def run_ranks(tmp_path: Path, backend: str, device: str) -> list[dict]:
    init = f"file://{tmp_path / 'store'}"
    processes = []
    for rank in range(WORLD):
        command = [
            sys.executable,
            str(ROOT / "tests" / "ddp_training.py"),
            f"--rank={rank}",
            f"--world={WORLD}",
            f"--backend={backend}",
            f"--device={device}",
            f"--init={init}",
            f"--out={tmp_path / f'state_{rank}.pt'}",
        ]
        environment = dict(os.environ, OMP_NUM_THREADS="1")
        processes.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=environment,
            )
        )
    for rank, process in enumerate(processes):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"
    return [torch.load(tmp_path / f"state_{rank}.pt") for rank in range(WORLD)]


def assert_states_match(states: list[dict], expected: dict) -> None:
    for rank, state in enumerate(states):
        assert state.keys() == expected.keys()
        for name, value in state.items():
            torch.testing.assert_close(
                value, expected[name], rtol=1e-9, atol=1e-12, msg=f"rank {rank}: {name}"
            )
    initial = ddp_training.make_model().state_dict()
    assert any(not torch.equal(initial[name], expected[name]) for name in initial)  # it trained


def test_ddp_with_gloo_matches_single_process_training(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    assert_states_match(run_ranks(tmp_path, "gloo", "cpu"), ddp_training.single_process_state())


gpu = pytest.mark.gpu
needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and _cupy_runtime.gpu_kernels_available()),
    reason="needs a CUDA GPU with CuPy and NVRTC",
)


@gpu
@needs_kernels
@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_ddp_on_gpus_uses_each_ranks_device_and_stream(tmp_path, backend):
    if backend == "nccl" and torch.cuda.device_count() < WORLD:
        pytest.skip(f"NCCL needs one GPU per rank: {WORLD} GPUs, found {torch.cuda.device_count()}")
    assert_states_match(run_ranks(tmp_path, backend, "cuda"), ddp_training.single_process_state())


def _graph_inputs(seed: int):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(2, 8, 12, 16, device="cuda", generator=generator)
    target = torch.randn(2, 8, 24, 32, device="cuda", generator=generator)
    return x, target


def _model():
    torch.manual_seed(0)
    model = carafe_cupy.CARAFEPack(8, 2, up_kernel=5, up_group=2, compressed_channels=8).cuda()
    torch.nn.init.normal_(model.content_encoder.weight, std=0.1)
    return model


def _eager_step(model, x, target):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@gpu
@needs_kernels
def test_torch_cuda_graph_captures_forward_and_backward_and_replays_new_data():
    model, reference = _model(), _model()
    static_x, static_target = _graph_inputs(0)
    # warm-up on a side stream, as torch.cuda.graph asks: compiles the kernels
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            _eager_step(model, static_x, static_target)
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = torch.nn.functional.mse_loss(model(static_x), static_target)
        static_loss.backward()
    static_grads = [p.grad for p in model.parameters()]  # written in place by each replay
    for seed in (1, 2):
        x, target = _graph_inputs(seed)
        static_x.copy_(x)
        static_target.copy_(target)
        graph.replay()
        torch.cuda.synchronize()
        loss, grads = _eager_step(reference, x, target)
        torch.testing.assert_close(static_loss, loss)
        for mine, theirs in zip(static_grads, grads):
            torch.testing.assert_close(mine, theirs)


@gpu
@needs_kernels
def test_first_call_inside_a_capture_asks_for_a_warm_up(monkeypatch):
    from carafe_cupy._runtime.gpu_checks import KernelNotReadyForCaptureError

    monkeypatch.setattr(_cupy_runtime, "get_runtime", lambda: fresh_runtime)
    fresh_runtime = _cupy_runtime.CupyRuntime()  # nothing compiled yet in this process' view
    x, _ = _graph_inputs(0)
    masks = torch.rand(2, 9, 24, 32, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(KernelNotReadyForCaptureError, match="before capturing"):
        with torch.cuda.graph(graph):
            carafe_cupy.carafe(x, masks, 3, 1, 2)
    assert fresh_runtime.compile_count == 0


@gpu
@needs_kernels
def test_compile_reduce_overhead_forward_and_backward_with_new_data():
    model = _model()
    reference = _model()

    @torch.compile(mode="reduce-overhead")
    def step(x, target):
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        return loss

    for seed in range(4):  # warm-up runs, recording, then replays
        x, target = _graph_inputs(seed)
        model.zero_grad(set_to_none=True)
        torch.compiler.cudagraph_mark_step_begin()
        loss = step(x, target).clone()
        grads = [p.grad.clone() for p in model.parameters()]
        expected_loss, expected_grads = _eager_step(reference, x, target)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-4, atol=1e-5)
        for mine, theirs in zip(grads, expected_grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
