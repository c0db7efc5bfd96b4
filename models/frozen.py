"""A base for the core's frozen dataclasses: pickled as their constructor's arguments.

A frozen dataclass unpickles by setting its fields one by one, which its own ``__setattr__``
refuses when the class is compiled (mypyc, the compiled build: ``setup.py``); the pure
build's dataclasses work around that, the compiled ones do not. Pickled as the arguments to
its constructor instead, an instance is rebuilt the way it was first built, derived fields
(``field(init=False)``, set in ``__post_init__``) computed again rather than copied, in both
builds. Instances cross processes this way: the backfill's child (``stream.worker``) and
eval's draws in processes of their own.

>>> import pickle
>>> from models.session import SessionPolicy
>>> policy = pickle.loads(pickle.dumps(SessionPolicy(timeout_minutes=10)))
>>> policy.timeout_minutes, policy.timeout_ms
(10, 600000)
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

__all__ = ["Frozen"]


class Frozen:
    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        values = tuple(getattr(self, f.name) for f in fields(self) if f.init)  # type: ignore[arg-type]
        return (type(self), values)
