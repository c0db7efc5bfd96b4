"""The soak's result (``segmenter soak``): what was injected, what was lost or wrong; printed
as a table, and written as Markdown into the soak section of ``docs/reliability.md``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from stream.tools.soak_checks import Findings, replace_section
from stream.tools.soak_traffic import Sender

if TYPE_CHECKING:
    from stream.tools.soak import SoakConfig

__all__ = ["SoakResult", "print_result"]


@dataclass
class SoakResult:
    config: SoakConfig
    workdir: Path
    began: datetime = field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    injected: Counter[str] = field(default_factory=Counter)
    sender: Sender | None = None
    caught_up: float | None = None  # seconds the workers took after the traffic stopped
    lag: dict[str, int] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    findings: Findings | None = None
    state_store: str = ""  # the workers' SEGMENTER_STATE_STORE

    def injections(self) -> list[tuple[str, str]]:
        i = self.injected
        sender = self.sender
        delivered = sender.delivered() if sender else []
        valid = [s.out.message for s in delivered if s.out.message is not None]
        garbage = Counter(s.out.garbage for s in delivered if s.out.garbage)
        purchases = sum(m.events for m in valid if m.source == "purchases")
        clicks = sum(m.events for m in valid if m.source == "clickstream")
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(garbage.items()))
        return [
            ("workers SIGKILLed (each replaced at once)", f"{i['kill']}"),
            (
                "Redis restarts with its append-only file",
                f"{i['redis']} ({i['redis_hard']} after SIGKILL, the rest clean stops)",
            ),
            ("broker connection cuts (proxy)", f"{i['cut']} ({i['cut_seconds']} s in all)"),
            ("valid messages delivered", f"{len(valid):,}"),
            ("events: CDNOW purchases, generated clicks", f"{purchases:,}, {clicks:,}"),
            ("garbage messages", f"{sum(garbage.values()):,} ({kinds})"),
            (
                "garbage share of messages",
                f"{sum(garbage.values()) / max(1, len(delivered)):.1%}",
            ),
            ("producer sends failed and sent again", f"{sender.failures if sender else 0}"),
        ]

    def outcomes(self) -> list[tuple[str, str]]:
        f = self.findings or Findings()
        rows = [
            (
                "caught up after the traffic stopped",
                f"in {self.caught_up:.0f} s" if self.caught_up is not None else f"NO: {self.lag}",
            ),
            ("workers that crashed by themselves", f"{len(self.crashes)}"),
            ("customers checked against the oracle", f"{f.customers:,}"),
            ("dead letters read (at-least-once repeats)", f"{f.letters:,} ({f.letters_repeated})"),
        ]
        rows += [(what, f"{n:,}") for what, n in f.wrong().items()]
        return rows

    @property
    def ok(self) -> bool:
        f = self.findings
        return (
            f is not None
            and self.caught_up is not None
            and not self.crashes
            and not any(f.wrong().values())
            and f.garbage > 0
            and f.customers > 0
        )

    def details(self) -> list[str]:
        """Examples of what went wrong, for the report and the console."""
        f = self.findings or Findings()
        lines = [f"crash: {c}" for c in self.crashes]
        for cid, (got, want) in list(f.wrong_customers.items())[:5]:
            lines.append(f"customer {cid}: got {got}, want {want}")
        for sent in f.garbage_missing[:5]:
            lines.append(
                f"garbage ({sent.out.garbage}) at {sent.topic}[{sent.partition}]@{sent.offset} "
                "has no dead letter"
            )
        for name, (counter, recounted) in list({**f.sizes_off, **f.members_off}.items())[:5]:
            lines.append(f"counter {name}: {counter}, recount {recounted}")
        return lines

    def markdown(self) -> str:
        c = self.config
        command = f"segmenter soak --minutes {c.minutes:g} --seed {c.seed}"
        lines = [
            f"Last run: {self.began:%Y-%m-%d %H:%M} UTC, `{command}` (`make soak`), "
            f"{self.seconds / 60:.1f} minutes, {c.workers} workers on {c.partitions} partitions, "
            f"{c.rate:g} messages/s"
            + (f", workers' state in {self.state_store}" if self.state_store else "")
            + f"; **{'nothing lost' if self.ok else 'FAILED'}**.",
            "",
            "| injected | |",
            "|---|---|",
            *(f"| {what} | {value} |" for what, value in self.injections()),
            "",
            "| result | |",
            "|---|---|",
            *(f"| {what} | {value} |" for what, value in self.outcomes()),
        ]
        details = self.details()
        if details:
            lines += ["", *(f"- {d}" for d in details)]
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        replace_section(path, self.markdown())


def print_result(result: SoakResult, say: Callable[[str], None]) -> None:
    width = max(len(w) for w, _ in result.injections() + result.outcomes())
    say("")
    say(f"soak: {result.seconds / 60:.1f} minutes")
    for title, rows in (("injected", result.injections()), ("result", result.outcomes())):
        say(f"  {title}")
        for what, value in rows:
            say(f"    {what:<{width}}  {value}")
    for line in result.details():
        say(f"  ! {line}")
    say("NOTHING LOST" if result.ok else "FAILED: something was lost or wrong (above)")
