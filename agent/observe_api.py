"""The API routes of observability: ``GET /metrics`` and ``GET /v1/events``.

``/metrics``: Prometheus text format (version 0.0.4) of this agent's registry.

``/v1/events``: newline-delimited JSON, one event object per line (see
``agent.events.Event.to_dict``). Query parameters:

* ``since=SEQ``: only events after sequence number SEQ (resume a stream);
* ``limit=N``: at most the last N events of the history (0: none, only new ones);
* ``kind=K[,K...]``: only these kinds, or kinds under a prefix (``member``,
  ``replica.moved``);
* ``follow=1``: after the history, keep the stream open and send each new event.

A follower that falls too far behind gets a last line ``{"error": ...}`` saying how
many events it missed, and the stream ends (reconnect with ``since``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from agent.api import Handler, Request, StreamResponse
from agent.errors import ConfigError
from agent.events import KINDS, Event, EventBus, Overflow
from agent.metrics import CONTENT_TYPE, AgentMetrics

NDJSON = "application/x-ndjson"


def kind_filter(text: str | None) -> Callable[[Event], bool]:
    """``kind=member,replica.moved`` -> a predicate; unknown kinds are refused."""
    if not text:
        return lambda event: True
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    for item in wanted:
        if not any(kind == item or kind.startswith(item + ".") for kind in KINDS):
            raise ConfigError(
                f"kind: no event kind {item!r}; known kinds: {', '.join(sorted(KINDS))}"
            )

    def match(event: Event) -> bool:
        return any(event.kind == item or event.kind.startswith(item + ".") for item in wanted)

    return match


def _line(event: Event) -> bytes:
    return json.dumps(event.to_dict(), separators=(",", ":")).encode() + b"\n"


def routes(bus: EventBus, metrics: AgentMetrics) -> list[tuple[str, str, Handler]]:
    async def h_metrics(request: Request) -> StreamResponse:
        async def body() -> AsyncIterator[bytes]:
            yield metrics.render()

        return StreamResponse(body(), CONTENT_TYPE)

    async def h_events(request: Request) -> StreamResponse:
        since = request.query_int("since", 0) or 0
        limit = request.query_int("limit", None)
        follow = request.query_bool("follow")
        wanted = kind_filter(request.query.get("kind"))
        if not follow:
            history = [e for e in bus.recent(since=since) if wanted(e)]
            if limit is not None:
                history = history[-limit:] if limit else []

            async def once() -> AsyncIterator[bytes]:
                if history:
                    yield b"".join(_line(e) for e in history)

            return StreamResponse(once(), NDJSON)

        async def followed() -> AsyncIterator[bytes]:
            # Subscribe before reading the history (no await in between), so no event
            # falls between the two.
            with bus.subscribe() as subscription:
                history = [e for e in bus.recent(since=since) if wanted(e)]
                if limit is not None:
                    history = history[-limit:] if limit else []
                last = bus.last_seq
                # A first line at once, so the client knows the stream is open.
                yield b"".join(_line(e) for e in history) or b"\n"
                try:
                    async for event in subscription:
                        if event.seq > last:
                            last = event.seq
                            if wanted(event):
                                yield _line(event)
                except Overflow as exc:
                    error = {
                        "error": f"this stream fell {exc.missed} events behind and was cut "
                        f"off; reconnect with since={last}",
                    }
                    yield json.dumps(error).encode() + b"\n"

        return StreamResponse(followed(), NDJSON)

    return [("GET", "/metrics", h_metrics), ("GET", "/v1/events", h_events)]


__all__ = ["kind_filter", "routes"]
