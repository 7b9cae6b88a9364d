"""Registers :class:`carafe_cupy.CARAFEPack` as ``'carafe'`` in mmengine's ``MODELS``.

mmcv-lite has no compiled ops, so nothing registers ``'carafe'`` there, and
``mmcv.cnn.build_upsample_layer(dict(type='carafe', ...))`` (how mmdetection's
FPN_CARAFE and CARAFE mask heads build their upsamplers) fails. One line in an
mmengine config fixes that::

    custom_imports = dict(imports=["carafe_cupy.mmengine_registry"], allow_failed_imports=False)

or, in code, ``import carafe_cupy.mmengine_registry``. Importing this module
registers the class when mmengine is importable and the name is free; ``registered``
says whether ``'carafe'`` now builds this package's CARAFEPack.

Full mmcv (with its compiled ops, ``mmcv._ext``) is never overridden: importing
``mmcv.ops`` registers mmcv's own CARAFEPack under that name, and mmengine lets a
name be registered once, so where full mmcv is installed nothing is registered here
(a name taken first would make ``import mmcv.ops`` fail). A name already taken, by
mmcv or anyone, stays as it is.

This is a submodule, not part of ``import carafe_cupy``, because registering needs
torch (the module's class) and mmengine (slow to import), which the package itself
never imports, and because a registration that depended on what happened to be
imported before it would depend on import order.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

NAME = "carafe"


def full_mmcv_installed() -> bool:
    """Whether the installed mmcv has its compiled ops, found without importing mmcv."""
    try:
        spec = importlib.util.find_spec("mmcv")
    except (ImportError, ValueError):  # a broken or half-removed mmcv has no ops either
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        (Path(folder) / f"_ext{suffix}").is_file()
        for folder in spec.submodule_search_locations
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def register() -> bool:
    """Register CARAFEPack as ``'carafe'`` in mmengine's MODELS where mmengine is
    importable, full mmcv is not installed and the name is free. Returns whether
    ``'carafe'`` builds this package's CARAFEPack afterwards (again True on a
    second call)."""
    try:
        from mmengine.registry import MODELS
    except ImportError:
        return False
    from .nn import CARAFEPack

    existing = MODELS.module_dict.get(NAME)
    if existing is not None:
        return existing is CARAFEPack
    if full_mmcv_installed():
        return False
    MODELS.register_module(name=NAME, module=CARAFEPack)
    return True


registered: bool = register()
