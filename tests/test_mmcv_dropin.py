"""Every public name of mmcv.ops.carafe, with mmcv's signatures and results."""

from __future__ import annotations

import inspect
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402

from naive import naive_carafe  # noqa: E402

# mmcv.ops.carafe's public names and the parameters each takes (mmcv 2.x, mmengine's
# weight_init for the two helpers); Functions are called through .apply.
MMCV_SIGNATURES = {
    "CARAFE": ["kernel_size", "group_size", "scale_factor"],
    "CARAFENaive": ["kernel_size", "group_size", "scale_factor"],
    "CARAFEPack": [
        ("channels", inspect.Parameter.empty),
        ("scale_factor", inspect.Parameter.empty),
        ("up_kernel", 5),
        ("up_group", 1),
        ("encoder_kernel", 3),
        ("encoder_dilation", 1),
        ("compressed_channels", 64),
    ],
    "normal_init": [
        ("module", inspect.Parameter.empty),
        ("mean", 0),
        ("std", 1),
        ("bias", 0),
    ],
    "xavier_init": [
        ("module", inspect.Parameter.empty),
        ("gain", 1),
        ("bias", 0),
        ("distribution", "normal"),
    ],
}
FUNCTION_ARGUMENTS = ["ctx", "features", "masks", "kernel_size", "group_size", "scale_factor"]
K, G, S = 3, 2, 2


def _inputs(dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 4, 2, 3, dtype=dtype, generator=generator)
    masks = torch.rand(1, G * K * K, 2 * S, 3 * S, dtype=dtype, generator=generator)
    return features.requires_grad_(), masks.requires_grad_()


def test_mmcv_import_lines_work_with_the_package_name_swapped():
    # the import lines of mmcv's own test, FreqFusion and mmdetection's necks and heads
    lines = [
        "from mmcv.ops import CARAFE, CARAFENaive, CARAFEPack",
        "from mmcv.ops.carafe import normal_init, xavier_init, carafe",
        "from mmcv.ops.carafe import CARAFEPack",
        "from mmcv.ops.carafe import carafe_naive, CARAFEFunction, CARAFENaiveFunction",
    ]
    for line in lines:
        swapped = line.replace("mmcv.ops.carafe", "carafe_cupy").replace("mmcv.ops", "carafe_cupy")
        namespace: dict = {}
        exec(textwrap.dedent(swapped), namespace)
        imported = [name.strip() for name in swapped.split("import", 1)[1].split(",")]
        for name in imported:
            assert namespace[name] is getattr(carafe_cupy, name), name
            assert name in carafe_cupy.__all__


@pytest.mark.parametrize("name", sorted(MMCV_SIGNATURES))
def test_signatures_are_mmcvs(name):
    target = getattr(carafe_cupy, name)
    function = target.__init__ if inspect.isclass(target) else target
    parameters = list(inspect.signature(function).parameters.values())
    if inspect.isclass(target):
        parameters = parameters[1:]  # self
    expected = MMCV_SIGNATURES[name]
    if isinstance(expected[0], str):
        assert [p.name for p in parameters] == expected
    else:
        assert [(p.name, p.default) for p in parameters] == expected


@pytest.mark.parametrize("name", ["CARAFEFunction", "CARAFENaiveFunction"])
def test_functions_take_mmcvs_arguments_through_apply(name):
    function = getattr(carafe_cupy, name)
    assert issubclass(function, torch.autograd.Function)
    assert list(inspect.signature(function.forward).parameters) == FUNCTION_ARGUMENTS
    features, masks = _inputs()
    out = function.apply(features, masks, K, G, S)
    expected = naive_carafe(features.detach().numpy(), masks.detach().numpy(), K, G, S)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f, m: function.apply(f, m, K, G, S), (features, masks))


def test_functions_follow_type_promotion_and_give_grads_in_input_dtypes():
    features, masks = _inputs()
    masks = masks.detach().float().requires_grad_()
    out = carafe_cupy.CARAFEFunction.apply(features, masks, K, G, S)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert features.grad.dtype == torch.float64 and masks.grad.dtype == torch.float32


def test_every_carafe_entry_point_gives_the_same_result():
    features, masks = _inputs()
    expected = naive_carafe(features.detach().numpy(), masks.detach().numpy(), K, G, S)
    results = {
        "carafe": carafe_cupy.carafe(features, masks, K, G, S),
        "carafe_naive": carafe_cupy.carafe_naive(features, masks, K, G, S),
        "CARAFE": carafe_cupy.CARAFE(K, G, S)(features, masks),
        "CARAFENaive": carafe_cupy.CARAFENaive(K, G, S)(features, masks),
    }
    for name, out in results.items():
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, err_msg=name)


def test_mmcvs_gradcheck_of_carafe_naive_passes():
    # mmcv's own test: gradcheck(CARAFENaive(5, 4, 2), (feat, mask), atol=1e-4, eps=1e-4),
    # here on a smaller image
    generator = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 8, 2, 2, dtype=torch.float64, generator=generator).requires_grad_()
    mask = torch.rand(1, 100, 4, 4, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(carafe_cupy.CARAFENaive(5, 4, 2), (feat, mask), atol=1e-4)


def test_init_helpers_follow_mmengine():
    conv = torch.nn.Conv2d(64, 256, 3)
    carafe_cupy.xavier_init(conv, gain=2, bias=0.5, distribution="uniform")
    bound = 2 * (6 / (64 * 9 + 256 * 9)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert torch.all(conv.bias == 0.5)
    carafe_cupy.xavier_init(conv)  # normal by default
    assert abs(conv.weight.std().item() - (2 / (64 * 9 + 256 * 9)) ** 0.5) < 2e-3
    carafe_cupy.normal_init(conv, mean=3, std=0.01, bias=-1)
    assert abs(conv.weight.mean().item() - 3) < 1e-3 and torch.all(conv.bias == -1)
    without_bias = torch.nn.Conv2d(4, 4, 1, bias=False)
    carafe_cupy.normal_init(without_bias, std=0.001)
    carafe_cupy.xavier_init(torch.nn.ReLU())  # no weight: nothing to do, as in mmengine
    with pytest.raises(ValueError, match="distribution must be 'normal' or 'uniform', got 'flat'"):
        carafe_cupy.xavier_init(conv, distribution="flat")


def test_carafepack_init_uses_the_helpers_like_mmcv():
    pack = carafe_cupy.CARAFEPack(16, 2, compressed_channels=32)
    torch.manual_seed(0)
    pack.init_weights()
    expected = {name: value.clone() for name, value in pack.state_dict().items()}
    torch.manual_seed(0)
    for module in (pack.channel_compressor, pack.content_encoder):
        carafe_cupy.xavier_init(module, distribution="uniform")
    carafe_cupy.normal_init(pack.content_encoder, std=0.001)
    for name, value in pack.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_carafepack_takes_up_group_true_as_one_group_like_mmcv():
    # mmcv multiplies up_group into the encoder's channel count and hands it to the op
    # as an int, where True is 1
    torch.manual_seed(0)
    pack = carafe_cupy.CARAFEPack(16, 2, up_group=True)
    torch.manual_seed(0)
    one_group = carafe_cupy.CARAFEPack(16, 2, up_group=1)
    assert pack.up_group == 1 and type(pack.up_group) is int
    features = torch.randn(1, 16, 3, 4)
    torch.testing.assert_close(pack(features), one_group(features), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"CARAFEPack: up_group must be >= 1 .*got False"):
        carafe_cupy.CARAFEPack(16, 2, up_group=False)
