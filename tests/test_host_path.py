"""The thin host path of a call: packed kernel arguments, the driver launch with
them, the eager fast path (a plain autograd Function) and when it steps aside for
the custom op, and the checks cached per call signature. Runs without a GPU: the
kernels run on the CPU simulator, and the driver launch meets a fake CuPy."""

from __future__ import annotations

import ctypes
import threading
from types import SimpleNamespace

import pytest
import recording_runtime
from fake_cuda import FakeCupy

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402
from carafe_cupy._plan import planner as _planner  # noqa: E402
from carafe_cupy._runtime import cupy_runtime as _cupy_runtime  # noqa: E402
from carafe_cupy._runtime import launch as _launch  # noqa: E402
from carafe_cupy._runtime.arguments import ArgumentLayout, KernelArguments  # noqa: E402
from carafe_cupy._torch import checked_calls, eager  # noqa: E402

forward_op = torch.ops.carafe_cupy.carafe_forward.default
backward_op = torch.ops.carafe_cupy.carafe_backward.default

GEOMETRY = _planner.Geometry(1, 8, 5, 6, 3, 2, 2)  # tiled pairs
STRIDED = _planner.Geometry(1, 4, 7, 5, 3, 2, 1, 2, 1)  # general kernels, stride 2


def contiguous(shape, pointer):
    n, c, h, w = shape
    return _planner.TensorRef(pointer, (c * h * w, h * w, w, 1), "float32")


def forward_refs(geometry, base=0x10000):
    g = geometry
    shapes = (
        (g.batch, g.channels, g.height, g.width),
        (g.batch, g.mask_channels, g.out_height, g.out_width),
        (g.batch, g.channels, g.out_height, g.out_width),
    )
    return tuple(contiguous(shape, base * (i + 1)) for i, shape in enumerate(shapes))


def read_words(kernel_params: int, count: int) -> list[int]:
    """What a driver reads: each ``kernelParams`` entry is the address of one word."""
    addresses = (ctypes.c_void_p * count).from_address(kernel_params)
    return [ctypes.c_uint64.from_address(address).value for address in addresses]


def as_word(value) -> int:
    return int(value) % (1 << 64)


# ---------------------------------------------------------------- packed arguments


def test_the_packed_buffer_holds_every_argument_in_order():
    refs = forward_refs(GEOMETRY)
    (planned,) = _planner.plan_forward(GEOMETRY, *refs)
    args = _launch.launch_arguments(planned, GEOMETRY, refs)
    words = read_words(args.kernel_params(), len(args))
    assert words == [as_word(value) for value in args]
    slots = len(planned.operands)  # a null pointer where the kernel takes no tensor
    assert words[:slots] == [0 if i is None else refs[i].pointer for i in planned.operands]
    assert len(args) == 5 * slots + len(GEOMETRY.sizes) + len(planned.tiling)


def test_negative_words_are_their_twos_complement_and_read_back_signed():
    layout = ArgumentLayout(1, (-3, 7))
    args = KernelArguments(layout, (0xDEAD_BEEF,))
    assert read_words(args.kernel_params(), 3) == [0xDEAD_BEEF, (1 << 64) - 3, 7]
    assert [int(value) for value in args] == [0xDEAD_BEEF, -3, 7]
    read_back = args.read_back()  # what the simulator launches with
    assert [int(value) for value in read_back] == [0xDEAD_BEEF, -3, 7]
    assert [value.dtype.name for value in read_back] == ["uint64", "int64", "int64"]
    assert args == tuple(args) and args[1:] == tuple(args)[1:]


def test_each_call_writes_its_own_pointers_and_each_thread_its_own_buffer():
    layout = ArgumentLayout(2, (5,))
    first = KernelArguments(layout, (0x100, 0x200)).kernel_params()
    assert read_words(first, 3) == [0x100, 0x200, 5]
    again = KernelArguments(layout, (0x300, 0x400)).kernel_params()
    assert again == first and read_words(again, 3) == [0x300, 0x400, 5]

    seen = {}

    def other_thread():
        params = KernelArguments(layout, (0x500, 0x600)).kernel_params()
        seen["params"], seen["words"] = params, read_words(params, 3)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen["params"] != first and seen["words"] == [0x500, 0x600, 5]
    assert read_words(first, 3) == [0x300, 0x400, 5]  # this thread's buffer untouched


# ---------------------------------------------------------------- the driver launch


class DriverCupy(FakeCupy):
    """fake_cuda's CuPy with a current device to switch and a driver launch that
    records what it was given and the words its kernelParams point at."""

    def __init__(self, capabilities=(80, 80)):
        super().__init__(capabilities)
        self.driver_launches: list[dict] = []
        self.device_switches: list[int] = []
        fake = self

        def set_device(index):
            fake.device_switches.append(index)
            fake.current_device = index

        def launch_kernel(function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
            fake.driver_launches.append(
                {
                    "function": function,
                    "grid": (gx, gy, gz),
                    "block": (bx, by, bz),
                    "shared_mem": shared,
                    "stream": stream,
                    "device": fake.current_device,
                    "params": params,
                    "extra": extra,
                }
            )

        self.cuda.runtime.getDevice = lambda: fake.current_device
        self.cuda.runtime.setDevice = set_device
        self.cuda.driver = SimpleNamespace(launchKernel=launch_kernel)


class LoadedKernel:
    """A loaded kernel: a driver handle, and CuPy's own call, recorded."""

    def __init__(self, ptr):
        self.ptr = ptr
        self.calls = []

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


@pytest.fixture
def driver_cupy(monkeypatch):
    fake = DriverCupy()
    monkeypatch.setattr(_cupy_runtime, "_import_cupy", lambda: fake)
    runtime = _cupy_runtime.CupyRuntime()
    functions = {}

    def load(cupy, module_name, source, kernel_name, device):  # no compile: handles only
        names = _cupy_runtime._module_kernel_names(module_name, kernel_name)
        loaded = {name: LoadedKernel(0xF000 + len(functions) + i) for i, name in enumerate(names)}
        functions.update({(device, name): function for name, function in loaded.items()})
        return loaded

    monkeypatch.setattr(runtime, "_load", load)
    monkeypatch.setattr(_cupy_runtime, "get_runtime", lambda: runtime)
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    return fake, functions


def test_packed_launches_reach_the_driver_on_the_device_and_raw_stream(driver_cupy):
    fake, functions = driver_cupy
    stream = 0x7F00_BEEF_0000
    _launch.launch_forward(GEOMETRY, *forward_refs(GEOMETRY), 0, stream)  # cuda:0 loads first
    for geometry in (GEOMETRY, STRIDED):
        refs = forward_refs(geometry)
        fake.driver_launches.clear()
        _launch.launch_forward(geometry, *refs, 1, stream)
        planned = _planner.plan_forward(geometry, *refs)
        assert len(fake.driver_launches) == len(planned) > 0
        for launch, record in zip(planned, fake.driver_launches, strict=True):
            assert record["function"] == functions[(1, launch.kernel)].ptr  # cuda:1's handle
            assert (record["grid"], record["block"]) == (launch.grid, launch.block)
            assert (record["shared_mem"], record["stream"]) == (launch.shared_mem, stream)
            assert (record["device"], record["extra"]) == (1, 0)
        # the words as the driver reads them (this thread's buffer, last written now)
        args = _launch.launch_arguments(planned[-1], geometry, refs)
        words = read_words(fake.driver_launches[-1]["params"], len(args))
        assert words == [as_word(value) for value in args]
        assert fake.current_device == 0  # the caller's device is current again
    assert fake.device_switches == [1, 0, 1, 0]


def test_no_device_switch_when_the_device_is_current(driver_cupy):
    fake, _ = driver_cupy
    _launch.launch_forward(GEOMETRY, *forward_refs(GEOMETRY), 0, 5)
    assert fake.driver_launches and fake.device_switches == []


def test_a_plain_tuple_still_goes_through_cupys_own_call(driver_cupy):
    fake, functions = driver_cupy
    runtime = _cupy_runtime.get_runtime()
    name = "carafe_forward_float32"
    runtime.launch(_launch.KERNEL_MODULE, "source", name, (1, 1, 1), (32, 1, 1), (), 0, 0, 0)
    assert functions[(0, name)].calls == [((1, 1, 1), (32, 1, 1), (), 0)]
    assert fake.driver_launches == []


# ---------------------------------------------------------------- prepared calls


def test_a_prepared_call_launches_what_launch_forward_launches(monkeypatch):
    runtime = recording_runtime.install(monkeypatch)
    for geometry in (GEOMETRY, STRIDED):
        refs = forward_refs(geometry, base=0x10008)  # 8-byte aligned: the single-pixel plans
        runtime.launches.clear()
        _launch.launch_forward(geometry, *refs, 1, 0x77)
        expected = list(runtime.launches)
        runtime.launches.clear()
        layout = tuple((ref.strides, ref.pointer % 16) for ref in refs)
        prepared = _launch.prepare("forward", geometry, "float32", layout, 1)
        prepared.run(tuple(ref.pointer for ref in refs), 1, 0x77)
        assert runtime.launches == expected and expected


def test_a_prepared_backward_passes_null_for_an_absent_gradient(monkeypatch):
    runtime = recording_runtime.install(monkeypatch)
    g = GEOMETRY
    features, masks, output = forward_refs(g)
    refs = (output, features, masks, None, contiguous((1, 18, 10, 12), 0x90000))
    layout = tuple(None if ref is None else (ref.strides, ref.pointer % 16) for ref in refs)
    prepared = _launch.prepare("backward", g, "float32", layout, 0)
    pointers = tuple(0 if ref is None else ref.pointer for ref in refs)
    prepared.run(pointers, 0, 0)
    (record,) = runtime.launches
    assert "masks" in record.kernel_name
    runtime.launches.clear()
    _launch.launch_backward(g, *refs)
    assert runtime.launches == [record]


# ---------------------------------------------------------------- the eager fast path


def inputs(seed=0, dtype=torch.float32, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 8, 5, 6, generator=generator, dtype=dtype)
    masks = torch.rand(2, 18, 10, 12, generator=generator, dtype=dtype)
    grad = torch.randn(2, 8, 10, 12, generator=generator, dtype=dtype)
    return features.requires_grad_(requires_grad), masks.requires_grad_(requires_grad), grad


@pytest.fixture
def simulator(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")


def test_the_fast_path_and_the_custom_op_give_identical_results(simulator):
    features, masks, grad = inputs()
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert type(output.grad_fn).__name__ == "_ReassemblyBackward"  # the fast path ran
    grads = torch.autograd.grad(output, (features, masks), grad)
    op_output = forward_op(features, masks, 3, 2, 2)
    assert "_ReassemblyBackward" not in type(op_output.grad_fn).__name__
    op_grads = torch.autograd.grad(op_output, (features, masks), grad)
    assert torch.equal(output, op_output)
    for mine, theirs in zip(grads, op_grads, strict=True):
        assert torch.equal(mine, theirs)
    assert torch.equal(grads[0], backward_op(grad, features, masks, 3, 2, 2)[0])


def test_the_fast_path_computes_only_the_gradients_asked_for(simulator):
    features, masks, grad = inputs()
    masks.requires_grad_(False)
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    (grad_features,) = torch.autograd.grad(output, (features,), grad)
    assert torch.equal(grad_features, backward_op(grad, features, masks, 3, 2, 2)[0])


@pytest.mark.parametrize("modified", ["features", "masks"])
def test_an_input_modified_in_place_before_backward_is_refused(simulator, modified):
    features, masks, grad = inputs()
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert type(output.grad_fn).__name__ == "_ReassemblyBackward"
    with torch.no_grad():
        {"features": features, "masks": masks}[modified].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(output, (features, masks), grad)


def test_double_backward_through_the_fast_path_matches_the_op(simulator):
    features, masks, grad = inputs(dtype=torch.float64)
    grad.requires_grad_(True)
    results = []
    for function in (carafe_cupy.carafe, forward_op):
        output = function(features, masks, 3, 2, 2)
        first = torch.autograd.grad(output, (features, masks), grad, create_graph=True)
        second = torch.autograd.grad(first[0].square().sum() + first[1].sum(), (masks, grad))
        results.append((*first, *second))
    for mine, theirs in zip(*results, strict=True):
        assert torch.equal(mine, theirs)


def test_a_misaligned_view_gets_its_own_plan(simulator, monkeypatch):
    launched = []
    real_launch = _launch.launch
    monkeypatch.setattr(
        _launch, "launch", lambda name, *a: launched.append(name) or real_launch(name, *a)
    )
    storage = torch.rand(2 * 18 * 10 * 12 + 1)
    features = inputs(requires_grad=False)[0]
    aligned = storage[:-1].view(2, 18, 10, 12)
    misaligned = storage[1:].view(2, 18, 10, 12)  # 4 bytes off: no two-pixel plans
    for masks in (aligned, misaligned):
        output = carafe_cupy.carafe(features, masks, 3, 2, 2)
        assert torch.equal(output, forward_op(features, masks, 3, 2, 2))
    fast_aligned, op_aligned, fast_misaligned, op_misaligned = launched
    assert (fast_aligned, fast_misaligned) == (op_aligned, op_misaligned)
    assert fast_aligned != fast_misaligned


def test_no_grad_calls_and_channels_last_inputs_match_the_op(simulator):
    features, masks, _ = inputs(requires_grad=False)
    features = features.contiguous(memory_format=torch.channels_last)
    output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert output.grad_fn is None
    assert output.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(output, forward_op(features, masks, 3, 2, 2))


class CountingMode(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_custom_op(simulator):
    features, masks, _ = inputs(requires_grad=False)
    with CountingMode() as mode:
        assert not eager.applies(features, masks, (3, 2, 2, 1, 1))
        output = carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert "carafe_cupy.carafe_forward.default" in mode.ops
    assert torch.equal(output, carafe_cupy.carafe(features, masks, 3, 2, 2))


@pytest.mark.parametrize("mode", ["vmap", "autocast", "function mode", "jit trace"])
def test_special_modes_take_the_custom_op(simulator, mode):
    features, masks, _ = inputs(requires_grad=False)
    params = (3, 2, 2, 1, 1)
    assert eager.applies(features, masks, params)
    if mode == "vmap":
        seen = []

        def probe(f, m):
            seen.append(eager.applies(f, m, params))
            return carafe_cupy.carafe(f, m, 3, 2, 2)

        batched = torch.func.vmap(probe)(features.unsqueeze(0), masks.unsqueeze(0))
        assert seen == [False]
        assert torch.equal(batched[0], carafe_cupy.carafe(features, masks, 3, 2, 2))
    elif mode == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not eager.applies(features, masks, params)
            assert carafe_cupy.carafe(features, masks, 3, 2, 2).dtype == torch.bfloat16
    elif mode == "function mode":
        with torch.device("cpu"):
            assert not eager.applies(features, masks, params)
    else:
        seen = []

        def probe(f, m):
            seen.append(eager.applies(f, m, params))
            return carafe_cupy.carafe(f, m, 3, 2, 2)

        traced = torch.jit.trace(probe, (features, masks), check_trace=False)
        assert seen == [False]
        assert "carafe_cupy::carafe_forward" in str(traced.graph)


def test_the_fast_path_needs_plain_ints_one_dtype_and_a_kernel_device(monkeypatch, simulator):
    features, masks, _ = inputs(requires_grad=False)
    assert not eager.applies(features, masks, (3, 2, True, 1, 1))
    assert not eager.applies(features, masks.double(), (3, 2, 2, 1, 1))
    assert not eager.applies(features.numpy(), masks, (3, 2, 2, 1, 1))
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR")
    assert not eager.applies(features, masks, (3, 2, 2, 1, 1))  # the PyTorch path's device


# ---------------------------------------------------------------- checks per signature


def test_a_failing_signature_fails_again_and_is_not_kept(simulator):
    checked_calls.clear()
    features, masks, _ = inputs(requires_grad=False)
    bad_masks = masks[:, :9]
    for _ in range(2):
        with pytest.raises(ValueError, match="masks"):
            carafe_cupy.carafe(features, bad_masks, 3, 2, 2)
    assert checked_calls._forward_signatures == {}
    with pytest.raises(TypeError, match="scale_factor"):
        carafe_cupy.carafe(features, masks, 3, 2, True)  # equal to 1 as a key: refused


def test_a_checked_signature_is_checked_once_and_a_new_one_again(simulator, monkeypatch):
    checked_calls.clear()
    calls = []
    check = checked_calls._validate.check_geometry
    monkeypatch.setattr(
        checked_calls._validate, "check_geometry", lambda *a, **k: calls.append(a) or check(*a, **k)
    )
    features, masks, _ = inputs(requires_grad=False)
    for _ in range(3):
        carafe_cupy.carafe(features, masks, 3, 2, 2)
    assert len(calls) == 1
    carafe_cupy.carafe(features.contiguous(memory_format=torch.channels_last), masks, 3, 2, 2)
    assert len(calls) == 2  # other strides: another signature


def test_a_wrong_grad_output_is_refused_on_the_fast_path(simulator):
    features, masks, grad = inputs()
    checked = carafe_cupy.carafe(features, masks, 3, 2, 2).grad_fn.checked
    for _ in range(2):
        with pytest.raises(ValueError, match="grad_output"):
            eager._launch_backward(grad[:, :, :-1], features, masks, checked, (True, True))
    assert not checked.grad_output_checked
    eager._launch_backward(grad, features, masks, checked, (True, True))
    assert checked.grad_output_checked
    with pytest.raises(ValueError, match="grad_output"):  # still refused after a good one
        eager._launch_backward(grad[:, :, :-1], features, masks, checked, (True, True))


def test_the_fast_path_checks_memory_per_call_as_the_op_does(simulator, monkeypatch):
    from carafe_cupy._core import limits

    features = torch.randn(1, 2, 3, 3, requires_grad=True)
    masks = torch.rand(1, 9, 6, 6, requires_grad=True)
    monkeypatch.setattr(limits, "host_memory_bytes", lambda: 10**9)
    carafe_cupy.carafe(features, masks, 3, 1, 2)  # the signature is checked and kept
    # the output (288 bytes) fits, the gradients (72 + 1296 bytes) do not
    monkeypatch.setattr(limits, "host_memory_bytes", lambda: 1000)
    for function in (carafe_cupy.carafe, forward_op):
        output = function(features, masks, 3, 1, 2)
        with pytest.raises(ValueError, match="grad_masks"):
            torch.autograd.grad(output, (features, masks), torch.ones_like(output))
    monkeypatch.setattr(limits, "host_memory_bytes", lambda: 287)
    with pytest.raises(ValueError, match=r"the output \(1, 2, 6, 6\)"):
        carafe_cupy.carafe(features, masks, 3, 1, 2)
