"""The gateway's HTTP protocol: uvicorn's h11 implementation with a deadline on every request head.

uvicorn times out idle keep-alive connections only after a first response, and any byte cancels
that timer; a connection that never sends a request, or sends its headers a byte at a time, stays
open forever (issue 13: 1,030 silent sockets took a gateway with 1,024 descriptors offline). Here
a connection must deliver a complete request line and headers within `head_timeout_seconds` of
opening, and again after each response; otherwise it is closed. Bodies have their own deadline in
the upload reader (gateway/uploads.py). The head's size is bounded by h11 itself
(`h11_max_incomplete_event_size`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class BoundedH11Protocol(H11Protocol):
    head_timeout_seconds = 10.0  # set per server by `with_head_timeout`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_head_deadline()  # a request's head has arrived in full

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()  # the next request on this connection gets its own deadline

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout_seconds, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def with_head_timeout(seconds: float) -> type[BoundedH11Protocol]:
    """The protocol class to give uvicorn (`http=`), with this server's head deadline."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {"head_timeout_seconds": seconds})
