"""JAX arrays on the CPU: eager calls give JAX arrays back (bfloat16 through torch),
transforms are refused with a plain message, and the documented pure_callback recipe
works under jax.jit and jax.grad."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason='needs JAX (pip install -e ".[interop]")')
import jax.numpy as jnp  # noqa: E402
from test_readme import python_blocks  # noqa: E402

import carafe_cupy  # noqa: E402

from naive import naive_carafe, naive_carafe_backward  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K, G, S = 3, 2, 2
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)
EAGERLY = "carafe_cupy runs eagerly, on concrete arrays, outside JAX transforms"


@pytest.fixture(params=["pytorch", pytest.param("simulator", marks=needs_compiler)])
def cpu_route(request, monkeypatch):
    if request.param == "simulator":
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    else:
        monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    return request.param


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    masks = rng.random((2, G * K * K, 3 * S, 5 * S)).astype(np.float32)
    grad_output = rng.standard_normal((2, 4, 3 * S, 5 * S)).astype(np.float32)
    return features, masks, grad_output


def _is_jax_array(value, dtype) -> bool:
    return isinstance(value, jax.Array) and value.dtype == dtype


@pytest.mark.parametrize(
    "dtype, tolerance",
    [(jnp.float32, 1e-5), (jnp.float16, 2e-2), (jnp.bfloat16, 5e-2)],
    ids=["float32", "float16", "bfloat16"],
)
def test_jax_cpu_arrays_run_and_come_back_as_jax_arrays(cpu_route, dtype, tolerance):
    features, masks, grad_output = (jnp.asarray(a, dtype) for a in _inputs())
    wide = [np.asarray(a, np.float64) for a in (features, masks, grad_output)]
    out = carafe_cupy.carafe(features, masks, K, G, S)
    assert _is_jax_array(out, dtype)
    expected = naive_carafe(wide[0], wide[1], K, G, S)
    np.testing.assert_allclose(
        np.asarray(out, np.float64), expected, rtol=tolerance, atol=tolerance
    )
    grads = carafe_cupy.carafe_backward(grad_output, features, masks, K, G, S)
    expected_grads = naive_carafe_backward(wide[2], wide[0], wide[1], K, G, S)
    for grad, reference in zip(grads, expected_grads):
        assert _is_jax_array(grad, dtype)
        np.testing.assert_allclose(
            np.asarray(grad, np.float64), reference, rtol=tolerance, atol=tolerance
        )


def test_float64_jax_arrays_with_x64_enabled():
    code = """
        import numpy as np
        import jax.numpy as jnp
        import carafe_cupy
        from naive import naive_carafe
        rng = np.random.default_rng(0)
        features, masks = rng.standard_normal((1, 2, 3, 4)), rng.random((1, 9, 6, 8))
        out = carafe_cupy.carafe(jnp.asarray(features), jnp.asarray(masks), 3, 1, 2)
        assert out.dtype == jnp.float64, out.dtype
        np.testing.assert_allclose(out, naive_carafe(features, masks, 3, 1, 2), rtol=1e-12)
        print("ok")
        """
    environment = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    environment.pop("CARAFE_CUPY_SIMULATOR", None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


def test_mixing_jax_and_numpy_is_refused_naming_both(cpu_route):
    features, masks, _ = _inputs()
    with pytest.raises(TypeError, match="carafe: inputs must all be arrays of one kind") as info:
        carafe_cupy.carafe(jnp.asarray(features), masks, K, G, S)
    assert "masks is numpy.ndarray" in str(info.value)


def test_under_jit_the_call_is_refused_saying_it_runs_eagerly():
    features, masks, _ = (jnp.asarray(a) for a in _inputs())
    with pytest.raises(TypeError, match=r"carafe: features is a JAX tracer") as info:
        jax.jit(lambda f, m: carafe_cupy.carafe(f, m, K, G, S))(features, masks)
    assert EAGERLY in str(info.value)


def test_under_grad_the_call_is_refused_naming_the_traced_argument():
    features, masks, _ = (jnp.asarray(a) for a in _inputs())
    with pytest.raises(TypeError, match=r"reassemble: kernels is a JAX tracer") as info:
        jax.grad(lambda m: carafe_cupy.reassemble(features, m, K, G, S).sum())(masks)
    assert EAGERLY in str(info.value)


def test_under_vmap_the_call_is_refused():
    features, masks, _ = (jnp.asarray(a)[None] for a in _inputs())
    with pytest.raises(TypeError, match=EAGERLY):
        jax.vmap(lambda f, m: carafe_cupy.carafe(f, m, K, G, S))(features, masks)


def _documented_recipe() -> str:
    text = (ROOT / "docs" / "usage.md").read_text()
    blocks = [
        code
        for _, code, markers in python_blocks(text)
        if any("test_interop_jax.py" in body for _, body in markers)
    ]
    assert len(blocks) == 1, "docs/usage.md should hold one JAX recipe block"
    return blocks[0]


def test_the_documented_pure_callback_recipe_runs_under_jit_and_grad(monkeypatch):
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(_documented_recipe(), "docs/usage.md JAX recipe", "exec"), namespace)
    features, masks = (np.asarray(namespace[name], np.float64) for name in ("features", "masks"))
    np.testing.assert_allclose(
        np.asarray(namespace["out"]), naive_carafe(features, masks, 5, 1, 2), rtol=1e-5, atol=1e-6
    )
    ones = np.ones((1, 8, 12, 12))
    expected_grad = naive_carafe_backward(ones, features, masks, 5, 1, 2)[0]
    np.testing.assert_allclose(
        np.asarray(namespace["grad_features"]), expected_grad, rtol=1e-5, atol=1e-5
    )
    # both gradients, under jit, against the package's own backward
    upsample = namespace["jax_carafe"](K, G, S)
    f, m, g = (jnp.asarray(a) for a in _inputs(seed=5))
    out, pullback = jax.vjp(jax.jit(upsample), f, m)
    grads = jax.jit(pullback)(g)
    expected = carafe_cupy.carafe_backward(*(np.asarray(a) for a in (g, f, m)), K, G, S)
    np.testing.assert_array_equal(
        np.asarray(out), carafe_cupy.carafe(np.asarray(f), np.asarray(m), K, G, S)
    )
    for grad, want in zip(grads, expected):
        np.testing.assert_array_equal(np.asarray(grad), want)
