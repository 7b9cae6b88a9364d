"""Environment variables: parsed one way (carafe_cupy._core.env), refused with
their name when they cannot be parsed, and every one the package reads listed
by ``python -m carafe_cupy info`` (found by scanning the source)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from carafe_cupy._cli import environment as _environment
from carafe_cupy._core import env as _env
from carafe_cupy._runtime import launch as _launch
from carafe_cupy._sim import build as _build
from carafe_cupy._sim import runtime as _sim_runtime

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "carafe_cupy"
ENV_READERS = {"text", "flag", "integer", "words", "reader"}  # carafe_cupy._core.env


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "On", " 1 ", "\ttrue\n"])
def test_true_values(monkeypatch, value):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", value)
    assert _env.flag("CARAFE_CUPY_SIMULATOR") is True
    assert _launch.simulator_enabled() is True


@pytest.mark.parametrize("value", ["0", " 0", "false", "False", "off", "OFF", "no", "", "  "])
def test_false_values_turn_the_simulator_off(monkeypatch, value):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", value)
    assert _launch.simulator_enabled() is False
    monkeypatch.setenv("CARAFE_CUPY_SIM_ASAN", value)
    assert _build._asan_requested() is False


@pytest.mark.parametrize("value", ["2", "maybe", "enabled", "y", "t", "-1", "0x1", "1 1"])
def test_other_values_are_refused_with_the_variables_name(monkeypatch, value):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", value)
    with pytest.raises(ValueError, match=f"CARAFE_CUPY_SIMULATOR must be a boolean.*{value!r}"):
        _launch.simulator_enabled()
    monkeypatch.setenv("CARAFE_CUPY_SIM_ASAN", value)
    with pytest.raises(ValueError, match="CARAFE_CUPY_SIM_ASAN must be a boolean"):
        _build._asan_requested()


def test_unset_is_off(monkeypatch):
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR", raising=False)
    assert _launch.simulator_enabled() is False


def test_reads_on_every_call_follow_each_change(monkeypatch):
    # the simulator switch and the kernel variant keep what each value parses to
    from carafe_cupy._plan.types import forced_variant, requested_variant

    for value, expected in [("1", True), ("off", False), ("yes", True), (" 0 ", False)]:
        monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", value)
        assert _launch.simulator_enabled() is expected
    monkeypatch.delenv("CARAFE_CUPY_SIMULATOR")
    assert _launch.simulator_enabled() is False
    for value in ["tiled", "general", ""]:
        monkeypatch.setenv("CARAFE_CUPY_KERNEL_VARIANT", value)
        assert requested_variant() == (value or "auto")
        with forced_variant("tiled_pair"):
            assert requested_variant() == "tiled_pair"
    for _ in range(2):  # a refused value is refused every time, with what it holds
        monkeypatch.setenv("CARAFE_CUPY_KERNEL_VARIANT", " tiled")
        with pytest.raises(ValueError, match="CARAFE_CUPY_KERNEL_VARIANT must be one of.*' tiled'"):
            requested_variant()
    monkeypatch.delenv("CARAFE_CUPY_KERNEL_VARIANT")
    assert requested_variant() == "auto"


def test_a_replaced_environ_is_read_as_it_is(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "1")
    monkeypatch.setattr(os, "environ", {"CARAFE_CUPY_SIMULATOR": "maybe"})
    with pytest.raises(ValueError, match="CARAFE_CUPY_SIMULATOR must be a boolean.*'maybe'"):
        _launch.simulator_enabled()
    monkeypatch.setattr(os, "environ", {})
    assert _launch.simulator_enabled() is False


@pytest.mark.parametrize(
    "value",
    [str(2**63), str(2**63 + 1), str(2**64 - 1), str(2**64), str(10**30), "67108865", "16383",
     "0", "-65536"],
)
def test_the_fiber_stack_is_bounded(monkeypatch, value):
    monkeypatch.setenv("CARAFE_CUPY_SIM_STACK", value)
    bounds = "CARAFE_CUPY_SIM_STACK must be between 16384 and 67108864"
    with pytest.raises(ValueError, match=bounds):
        _sim_runtime.SimRuntime()


@pytest.mark.parametrize("value, size", [("16384", 16384), (" 1048576 ", 1048576),
                                         ("67108864", 67108864), ("", 65536)])
def test_fiber_stacks_in_range_are_taken(monkeypatch, value, size):
    monkeypatch.setenv("CARAFE_CUPY_SIM_STACK", value)
    assert _sim_runtime.SimRuntime().stack_size == size


def test_a_stack_size_argument_out_of_range_is_refused():
    with pytest.raises(ValueError, match="stack_size must be between"):
        _sim_runtime.SimRuntime(stack_size=2**64 - 1)


@pytest.mark.parametrize("name", ["CARAFE_CUPY_SIM_STACK", "CARAFE_CUPY_SIM_SEED"])
@pytest.mark.parametrize("value", ["12k", "1e6", "seven", "0x10", "1.5"])
def test_non_numbers_are_refused_with_the_variables_name(monkeypatch, name, value):
    monkeypatch.setattr(_sim_runtime, "_runtime", None)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be an integer, got {value!r}"):
        _sim_runtime.get_runtime()


def test_unbalanced_quotes_in_cxx_are_refused_with_its_name(monkeypatch):
    monkeypatch.setenv("CXX", 'g++ "-O2')
    with pytest.raises(ValueError, match="CXX must be shell words with balanced quotes"):
        _build.find_compiler()


def test_unbalanced_quotes_in_the_flags_are_refused_with_their_name(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIM_CXXFLAGS", "-DX='1")
    with pytest.raises(ValueError, match="CARAFE_CUPY_SIM_CXXFLAGS must be shell words"):
        _build.build_spec("env_test", 'extern "C" __global__ void k() {}\n', False)


def test_shell_words_keep_their_quoting(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIM_CXXFLAGS", """ -DA="x y" -DB='z' """)
    assert _env.words("CARAFE_CUPY_SIM_CXXFLAGS") == ["-DA=x y", "-DB=z"]


# ------------------------------------------------------------ the info listing


def variables_read(source: str) -> set[str]:
    """Names the code reads: os.environ.get/[]/getenv and the readers of _core.env."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        target, args = None, []
        if isinstance(node, ast.Call):
            func, args = node.func, node.args
            if isinstance(func, ast.Attribute):
                owner = ast.unparse(func.value)
                if (owner.endswith("environ") and func.attr in {"get", "pop", "setdefault"}) or (
                    func.attr in ENV_READERS and owner.endswith("env")
                ) or func.attr == "getenv":
                    target = args[0] if args else None
            elif isinstance(func, ast.Name) and func.id == "getenv":
                target = args[0] if args else None
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ"):
            target = node.slice
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            names.add(target.value)
        elif isinstance(target, ast.Name) and target.id.isupper():
            names.add(target.id)  # a module constant naming the variable: resolved below
    return names


def package_variables() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        read = variables_read(source)
        constants = dict(re.findall(r'^(\w+) = "([A-Z][A-Z0-9_]+)"$', source, re.MULTILINE))
        found |= {constants.get(name, name) for name in read}
        # and any CARAFE_CUPY_ variable named anywhere in the package
        found |= set(re.findall(r"\bCARAFE_CUPY_[A-Z0-9_]+\b", source))
    return {name for name in found if not name.isidentifier() or name.upper() == name}


def test_the_scanner_finds_reads_of_every_kind():
    source = (
        'import os\nA = "CONST_NAME"\nos.environ.get("ONE")\nos.environ["TWO"]\n'
        'os.getenv("THREE")\n_env.flag("FOUR")\n_env.integer("FIVE", 0)\n'
        'os.environ.get(A)\nos.environ["SIX"] = "1"\n_env.reader("SEVEN", parse)\n'
    )
    assert variables_read(source) >= {"ONE", "TWO", "THREE", "FOUR", "FIVE", "A", "SIX", "SEVEN"}
    found = package_variables()
    assert {"CXX", "CUPY_CACHE_DIR", "CARAFE_CUPY_SIM_CACHE", "CARAFE_CUPY_SIMULATOR"} <= found


def test_info_lists_every_variable_the_package_reads(monkeypatch):
    listing = "\n".join(_environment.environment_lines())
    missing = sorted(name for name in package_variables() if f"  {name}=" not in listing)
    assert not missing, f"add these to carafe_cupy._core.env.VARIABLES: {missing}"
    assert sorted(package_variables()) == sorted(_env.VARIABLES)


def test_info_shows_values_and_flags_the_invalid_ones(monkeypatch):
    monkeypatch.setenv("CARAFE_CUPY_SIM_STACK", str(2**64))
    monkeypatch.setenv("CARAFE_CUPY_SIMULATOR", "off")
    monkeypatch.delenv("CARAFE_CUPY_SIM_SEED", raising=False)
    lines = {line.split("=")[0].strip(): line for line in _environment.environment_lines()[1:]}
    assert "INVALID" in lines["CARAFE_CUPY_SIM_STACK"] and "between" in lines[
        "CARAFE_CUPY_SIM_STACK"]
    assert lines["CARAFE_CUPY_SIMULATOR"].startswith("  CARAFE_CUPY_SIMULATOR='off': boolean")
    assert lines["CARAFE_CUPY_SIM_SEED"].startswith("  CARAFE_CUPY_SIM_SEED=unset: ")


def test_info_shows_the_cache_folders_and_the_variables(tmp_path):
    cache = tmp_path / "sim"
    env = {**os.environ, "CARAFE_CUPY_SIM_CACHE": str(cache), "CARAFE_CUPY_SIMULATOR": "maybe"}
    result = subprocess.run(
        [sys.executable, "-m", "carafe_cupy", "info"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"simulator cache (CARAFE_CUPY_SIM_CACHE): {cache} (created private" in result.stdout
    assert "kernel cache (CARAFE_CUPY_KERNEL_CACHE): " in result.stdout
    assert "environment variables read:" in result.stdout
    assert "CARAFE_CUPY_SIMULATOR='maybe' (INVALID:" in result.stdout
    assert not cache.exists()  # info creates nothing
