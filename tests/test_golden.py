"""mmcv's own golden tensors (tests/data, copied from mmcv's test suite)."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carafe_cupy  # noqa: E402

from cpu_paths import cpu_path  # noqa: E402, F401  (each test on both CPU paths)
from naive import naive_carafe  # noqa: E402

DATA = Path(__file__).parent / "data"
SHAPES = {
    "feat": (2, 64, 3, 3),
    "mask": (2, 100, 6, 6),
    "output": (2, 64, 6, 6),
    "feat_grad": (2, 64, 3, 3),
    "mask_grad": (2, 100, 6, 6),
}
KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR = 5, 4, 2


def load(name: str) -> torch.Tensor:
    array = np.fromfile(DATA / f"carafe_{name}.bin", dtype=np.float32).reshape(SHAPES[name])
    return torch.from_numpy(array.copy())


def test_golden_files_are_intact():
    import hashlib

    expected = {
        "feat": "49ec1fff2795cf1231cf117e1570d882fc1787b7679ebc8f72c9b5098adc0f99",
        "mask": "b11adf9f2035dbd14a92e624a5f491999a8f38a1b4f7419c9a32fce0fb9be43c",
        "output": "4e187868bf0181e50c5b9b69519bdb267b68f8725e53379c76fd2338129195c8",
    }
    for name, digest in expected.items():
        assert hashlib.sha256((DATA / f"carafe_{name}.bin").read_bytes()).hexdigest() == digest


def test_naive_reference_matches_golden():
    # pins the test's own reference to mmcv before anything is compared with it
    out = naive_carafe(load("feat").numpy(), load("mask").numpy(), 5, 4, 2)
    np.testing.assert_allclose(out, load("output").numpy(), atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_forward_and_gradients_match_golden(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    features = load("feat").to(device).requires_grad_()
    masks = load("mask").to(device).requires_grad_()
    output = carafe_cupy.carafe(features, masks, KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR)
    output.sum().backward()
    torch.testing.assert_close(output.cpu(), load("output"), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.grad.cpu(), load("feat_grad"), atol=1e-5, rtol=0)
    torch.testing.assert_close(masks.grad.cpu(), load("mask_grad"), atol=1e-5, rtol=0)


def test_reassemble_at_stride_1_is_carafe_on_golden():
    """reassemble(f, m, k, G, s) with stride 1, dilation 1 is carafe, bit for bit."""
    results = []
    for op, extra in ((carafe_cupy.carafe, ()), (carafe_cupy.reassemble, (1, 1))):
        features, masks = load("feat").requires_grad_(), load("mask").requires_grad_()
        output = op(features, masks, KERNEL_SIZE, GROUP_SIZE, SCALE_FACTOR, *extra)
        output.sum().backward()
        results.append((output, features.grad, masks.grad))
    for carafe_result, reassemble_result in zip(*results):
        assert torch.equal(carafe_result, reassemble_result)
    torch.testing.assert_close(results[1][0], load("output"), atol=1e-5, rtol=0)
