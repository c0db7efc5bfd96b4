"""The input decoder the worker runs: msgspec's typed JSON decoding for the common case, the
core's own decoder (``models.events.decode_message``) for everything else.

The core's decoder checks every field in Python: about 5 µs an event here, the largest part of
the per-event cost of a message of ten events. msgspec parses and checks types, lengths and
ranges in C on the way in. Whatever msgspec refuses (a missing field, a wrong type, an ISO
timestamp without offset, an integer id, anything unusual) goes through the core's decoder,
which either accepts it the way it always did or refuses it with its readable reason; identify
events (rare, with free-form traits) always do. So the contract, and every reason a dead
letter carries, stay the core's: ``tests/unit/test_fast_decoder.py`` checks on generated and
hostile input that both decoders give the same events or the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from models.events import (
    CLICKSTREAM_TYPES,
    DecodeError,
    DecodeLimits,
    Event,
    decode_message,
    parse_timestamp,
)

__all__ = ["FastDecoder"]

_MIN_TS_MS = 631_152_000_000
_MAX_TS_MS = 4_102_444_800_000


class FastDecoder:
    """``decode(source, value, key) -> list[Event]``, raising ``DecodeError`` like the core."""

    def __init__(self, limits: DecodeLimits, loads: Callable[[bytes], Any] | None = None) -> None:
        self.limits = limits
        self.loads = loads
        n = limits.max_id_length
        # An id: a string with something other than white space, as the core requires.
        ident = Annotated[str, msgspec.Meta(max_length=n, pattern=r"\S")]
        text = Annotated[str, msgspec.Meta(max_length=n)] | None
        amount = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
        kind = Literal[tuple(sorted(CLICKSTREAM_TYPES))]  # type: ignore[valid-type]
        optional = [(name, text, None) for name in ("session_id", "device", "country", "channel")]
        click = msgspec.defstruct(
            "Click",
            [
                ("event_id", ident),
                ("type", kind),
                ("customer_id", ident),
                ("ts", int | str),
                ("category", text, None),
                ("product_id", text, None),
                ("price", amount | None, None),
                *optional,
            ],
        )
        item = msgspec.defstruct(
            "Item",
            [
                ("category", text, None),
                ("price", amount | None, None),
                ("quantity", amount | None, None),
            ],
        )
        items = Annotated[list[item], msgspec.Meta(max_length=limits.max_events_per_message)]  # type: ignore[valid-type]
        purchase = msgspec.defstruct(
            "Purchase",
            [
                ("event_id", ident),
                ("customer_id", ident),
                ("ts", int | str),
                ("amount", amount),
                ("items", items, msgspec.field(default_factory=list)),
                *optional,
            ],
        )
        nonempty = msgspec.Meta(min_length=1)
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {
            "clickstream": msgspec.json.Decoder(click | Annotated[list[click], nonempty]),  # type: ignore[valid-type]
            "purchases": msgspec.json.Decoder(purchase | Annotated[list[purchase], nonempty]),  # type: ignore[valid-type]
        }

    def __call__(self, source: str, value: bytes, key: bytes | None) -> list[Event]:
        decoder = self._decoders.get(source)
        limits = self.limits
        if decoder is None or len(value) > limits.max_message_bytes:
            return self._core(source, value, key)
        try:
            decoded = decoder.decode(value)
        except msgspec.DecodeError:
            return self._core(source, value, key)
        raws = decoded if isinstance(decoded, list) else [decoded]
        if len(raws) > limits.max_events_per_message:
            return self._core(source, value, key)
        key_text = None if key is None else key.decode("utf-8", "replace")
        first = raws[0].customer_id
        events = []
        for raw in raws:
            if raw.customer_id != first or (key_text is not None and raw.customer_id != key_text):
                return self._core(source, value, key)
            ts = raw.ts
            if type(ts) is not int or not _MIN_TS_MS <= ts <= _MAX_TS_MS:
                try:
                    ts = parse_timestamp(ts)
                except DecodeError:
                    return self._core(source, value, key)
            if source == "clickstream":
                events.append(
                    Event(
                        raw.event_id,
                        raw.customer_id,
                        raw.type,
                        ts,
                        raw.session_id,
                        raw.category,
                        raw.product_id,
                        raw.price,
                        None,
                        raw.device,
                        raw.country,
                        raw.channel,
                    )
                )
            else:
                items = tuple(
                    (
                        item.category or "unknown",
                        (item.price or 0.0) * (1.0 if item.quantity is None else item.quantity),
                    )
                    for item in raw.items
                )
                events.append(
                    Event(
                        raw.event_id,
                        raw.customer_id,
                        "purchase",
                        ts,
                        raw.session_id,
                        None,
                        None,
                        None,
                        raw.amount,
                        raw.device,
                        raw.country,
                        raw.channel,
                        items,
                    )
                )
        return events

    def _core(self, source: str, value: bytes, key: bytes | None) -> list[Event]:
        if self.loads is None:
            return decode_message(source, value, key, self.limits)
        return decode_message(source, value, key, self.limits, self.loads)
