"""The core's frozen dataclasses pickle through their constructors (``models.frozen``): the
compiled build's frozen classes cannot be unpickled field by field, and instances cross
processes (the backfill's child, eval's draws). These tests hold for both builds; `make
test-compiled` runs them against the compiled one."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import models
from models.clustering import ModelSnapshot
from models.frozen import Frozen
from models.personas import Persona
from models.segments import SegmentChange
from models.session import SessionPolicy


def frozen_dataclasses() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"models.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            params = getattr(cls, "__dataclass_params__", None)
            if cls.__module__ == module.__name__ and params is not None and params.frozen:
                found.append(cls)
    return found


def test_every_frozen_dataclass_of_the_core_pickles_through_its_constructor() -> None:
    classes = frozen_dataclasses()
    assert len(classes) >= 19  # the census itself works
    assert [c.__name__ for c in classes if not issubclass(c, Frozen)] == []


def test_a_model_a_persona_and_a_change_come_back_equal_and_working() -> None:
    # what crosses to the backfill's child and back: the model, the outcome's changes
    model = ModelSnapshot(3, ("a", "b"), ((0.0, 1.0), (1.0, 0.0)), (5, 7))
    back = pickle.loads(pickle.dumps(model))
    assert back == model and back.predict({"a": 0.9, "b": 0.1})[0] == 1

    change = SegmentChange("c", "rule:vip", "entered", False, True, 5, "r", 1, 9, 5, 2)
    assert pickle.loads(pickle.dumps(change)) == change

    ella = Persona("Ella", "", {"avg_order_value": 320, "desktop_share": 0.6})
    assert pickle.loads(pickle.dumps(ella)).vector() == ella.vector()

    # derived fields are computed again by the constructor, not copied
    policy = pickle.loads(pickle.dumps(SessionPolicy(timeout_minutes=10)))
    assert policy.timeout_ms == 600_000
