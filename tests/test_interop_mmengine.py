"""carafe_cupy.mmengine_registry: CARAFEPack as 'carafe' in mmengine's MODELS, so that
mmcv-lite's build_upsample_layer builds it, never overriding full mmcv. Each registration
runs in a fresh interpreter: mmengine's registry is global to a process."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTEROP_EXTRA = 'pip install -e ".[interop]"'
needs_mmengine_and_mmcv_lite = pytest.mark.skipif(
    importlib.util.find_spec("mmengine") is None or importlib.util.find_spec("mmcv") is None,
    reason=f"needs mmengine and mmcv-lite ({INTEROP_EXTRA})",
)
CONFIG_LINE = (
    'custom_imports = dict(imports=["carafe_cupy.mmengine_registry"], allow_failed_imports=False)'
)


def run_python(code: str, cwd: Path = ROOT, sys_path: Path | None = None) -> str:
    """Run ``code`` in a fresh interpreter; its stdout, after asserting it succeeded."""
    environment = dict(os.environ)
    if sys_path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(sys_path), *filter(None, [environment.get("PYTHONPATH")])]
        )
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def fake_full_mmcv(folder: Path) -> Path:
    """A folder holding an 'mmcv' package with a compiled-ops file, as full mmcv has."""
    package = folder / "mmcv"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / f"_ext{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    return folder


def test_the_documented_config_line_is_the_one_tested():
    assert CONFIG_LINE in (ROOT / "docs" / "pytorch.md").read_text()
    assert CONFIG_LINE in (ROOT / "carafe_cupy" / "mmengine_registry.py").read_text()


def test_importing_the_package_never_imports_mmengine():
    out = run_python(
        """
        import sys
        import carafe_cupy
        carafe_cupy.CARAFEPack, carafe_cupy.arrays, carafe_cupy.nn
        print("mmengine" in sys.modules, "carafe_cupy.mmengine_registry" in sys.modules)
        """
    )
    assert out.split() == ["False", "False"]


def test_without_mmengine_the_registry_module_imports_and_registers_nothing():
    out = run_python(
        """
        import sys
        sys.modules["mmengine"] = None  # as if mmengine were not installed
        import carafe_cupy.mmengine_registry as registry
        print(registry.registered)
        """
    )
    assert out.strip() == "False"


def test_full_mmcv_is_recognised_by_its_compiled_ops_without_importing_it(tmp_path):
    code = """
        import sys
        from carafe_cupy.mmengine_registry import full_mmcv_installed
        print(full_mmcv_installed(), "mmcv" in sys.modules)
        """
    lite = tmp_path / "lite"
    (lite / "mmcv").mkdir(parents=True)
    (lite / "mmcv" / "__init__.py").write_text("raise ImportError('never imported')")
    out = run_python(
        "import sys; sys.modules['mmengine'] = None\n" + textwrap.dedent(code), sys_path=lite
    )
    assert out.split() == ["False", "False"]
    full = fake_full_mmcv(tmp_path / "full")
    out = run_python(
        "import sys; sys.modules['mmengine'] = None\n" + textwrap.dedent(code), sys_path=full
    )
    assert out.split() == ["True", "False"]


@needs_mmengine_and_mmcv_lite
def test_a_config_line_makes_build_upsample_layer_build_carafepack(tmp_path):
    (tmp_path / "config.py").write_text(CONFIG_LINE + "\n")
    out = run_python(
        f"""
        import torch
        from mmengine.config import Config
        from mmengine.registry import MODELS
        import carafe_cupy
        assert "carafe" not in MODELS.module_dict, "registered before the config asked"
        Config.fromfile({str(tmp_path / "config.py")!r})  # runs custom_imports
        from mmcv.cnn import build_upsample_layer

        layer = build_upsample_layer(dict(type="carafe", channels=16, scale_factor=2))
        assert type(layer) is carafe_cupy.CARAFEPack, type(layer)
        # mmdetection's FPN_CARAFE passes every argument by name
        fpn_cfg = dict(type="carafe", up_kernel=3, up_group=2, encoder_kernel=3,
                       encoder_dilation=1, compressed_channels=32, channels=16, scale_factor=2)
        fpn_layer = build_upsample_layer(fpn_cfg)
        direct = carafe_cupy.CARAFEPack(16, 2, 3, 2, 3, 1, 32)
        direct.load_state_dict(fpn_layer.state_dict(), strict=True)
        features = torch.randn(2, 16, 5, 6)
        out = fpn_layer(features)
        assert out.shape == (2, 16, 10, 12)
        torch.testing.assert_close(out, direct(features), rtol=0, atol=0)
        import carafe_cupy.mmengine_registry as registry
        print(registry.registered, registry.register())
        """,
        cwd=tmp_path,
    )
    assert out.split() == ["True", "True"]


@needs_mmengine_and_mmcv_lite
def test_a_name_already_taken_is_left_as_it_is():
    out = run_python(
        """
        from mmengine.registry import MODELS

        class TheirCARAFEPack:
            pass

        MODELS.register_module(name="carafe", module=TheirCARAFEPack)
        import carafe_cupy.mmengine_registry as registry
        print(registry.registered, MODELS.get("carafe") is TheirCARAFEPack)
        """
    )
    assert out.split() == ["False", "True"]


@needs_mmengine_and_mmcv_lite
def test_where_full_mmcv_is_installed_its_own_registration_still_succeeds(tmp_path):
    full = fake_full_mmcv(tmp_path)
    out = run_python(
        """
        from mmengine.registry import MODELS
        import carafe_cupy.mmengine_registry as registry
        print(registry.registered, "carafe" in MODELS.module_dict)

        class MmcvCARAFEPack:  # what importing mmcv.ops then registers
            pass

        MODELS.register_module(name="carafe", module=MmcvCARAFEPack)  # a taken name raises
        print(MODELS.get("carafe") is MmcvCARAFEPack)
        """,
        sys_path=full,
    )
    assert out.split() == ["False", "False", "True"]
