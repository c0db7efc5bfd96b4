"""Which build of the pure core this process runs: pure Python, or compiled by mypyc
(``SEGMENTER_COMPILE=1``, ``setup.py``; README "Measured", the compiled core)."""

from __future__ import annotations

import models.step

__all__ = ["core_build", "core_compiled"]


def core_compiled() -> bool:
    """True when the core's modules were imported from compiled extension modules.

    >>> core_compiled() in (True, False)
    True
    """
    return not str(getattr(models.step, "__file__", "")).endswith(".py")


def core_build() -> str:
    """The build in words, for logs and reports."""
    return "compiled (mypyc)" if core_compiled() else "pure Python"
