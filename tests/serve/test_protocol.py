"""The aiohttp internals `proxy.serve.protocol` relies on are still where it reads them."""

from __future__ import annotations

from aiohttp import web

from proxy.serve import protocol


def test_aiohttp_still_has_the_private_fields_the_protocol_reads() -> None:
    # If this fails after an aiohttp upgrade, a body whose chunked framing breaks mid-read
    # waits for limits.body_timeout again: find where aiohttp moved `_messages` and
    # `_current_request` and mend `protocol._Protocol.data_received`.
    assert protocol.PRIVATE_FIELDS_PRESENT
    assert {"_messages", "_current_request"} <= set(web.RequestHandler.__slots__)
    assert "data_received" in vars(protocol._Protocol)
