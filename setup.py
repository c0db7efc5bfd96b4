"""The build, with an optional compiled core.

``pip install .`` (and the editable ``make install``) installs the pure Python package. With
``SEGMENTER_COMPILE=1`` the pure core's modules (``models/``) are also compiled to C
extension modules with mypyc, from the same source and type annotations: the compiled build
(``make compiled``; README "Measured", the compiled core). It needs mypy, a C compiler and
Python's headers at build time, so build it without isolation, for example
``SEGMENTER_COMPILE=1 pip install --no-build-isolation .`` in an environment with mypy.
"""

import os
import sys

from setuptools import setup

#: The modules compiled: the pure core the worker runs per event (``models/``), the trainer's
#: drift monitors and metrics too, so nothing in it calls back into interpreted code.
COMPILED = [
    "models/clustering.py",
    "models/drift.py",
    "models/events.py",
    "models/facts.py",
    "models/features.py",
    "models/frozen.py",
    "models/identity.py",
    "models/metrics.py",
    "models/personas.py",
    "models/rules.py",
    "models/schedule.py",
    "models/segments.py",
    "models/session.py",
    "models/step.py",
]


#: Commands that only read the package's metadata: no need to compile for them (mypyc's code
#: generation takes minutes, and pip asks for the metadata before it builds the wheel).
METADATA_ONLY = {"egg_info", "dist_info", "sdist", "--name", "--version"}


def ext_modules() -> list:
    if os.environ.get("SEGMENTER_COMPILE", "") not in {"1", "true", "yes"}:
        return []
    if METADATA_ONLY.intersection(sys.argv[1:]) and "bdist_wheel" not in sys.argv:
        return []
    if {"editable_wheel", "develop"}.intersection(sys.argv[1:]):
        # compiled modules beside the sources would keep running after the sources change
        raise SystemExit(
            "SEGMENTER_COMPILE=1 is not for an editable install: build a wheel "
            "(pip wheel --no-build-isolation .) or use `make compiled`"
        )
    from mypyc.build import mypycify  # a build-time dependency of the compiled build only

    return mypycify(COMPILED, opt_level=os.environ.get("MYPYC_OPT_LEVEL", "3"))


setup(ext_modules=ext_modules())
