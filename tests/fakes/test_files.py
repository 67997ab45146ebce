"""The files a fake serves at /files/{name}, as plain calls."""

from __future__ import annotations

from proxy.fakes.files import Files


def test_a_file_is_served_at_the_url_put_returns_until_newer_ones_push_it_out() -> None:
    files = Files(keep=2)
    files.root = "http://127.0.0.1:9"
    url = files.put("a.png", b"A", "image/png")
    assert url == "http://127.0.0.1:9/files/a.png"
    got = files.get("/files/a.png")
    assert got is not None and (got.data, got.content_type) == (b"A", "image/png")
    files.put("b.png", b"B", "image/png")
    files.put("c.png", b"C", "image/png")
    assert files.get("/files/a.png") is None  # the oldest went first
    assert files.get("/files/c.png") is not None and files.get("/v1/c.png") is None
