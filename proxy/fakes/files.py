"""What a fake serves at `/files/{name}` without a key: generated images behind the URLs its
answers hand out, as providers serve theirs at signed URLs."""

from __future__ import annotations

from typing import Final

from proxy.fakes.api import Body

PREFIX: Final = "/files/"


class Files:
    """The newest `keep` files a fake made; an older URL answers 404, as an expired one does."""

    def __init__(self, keep: int = 10_000) -> None:
        # Until the server listens the URLs cannot name its port; `FakeProvider.start` sets it.
        self.root = "http://127.0.0.1"
        self._keep = keep
        self._files: dict[str, Body] = {}

    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Keep `data` under `name` and return the URL it is served at."""
        if len(self._files) >= self._keep:
            del self._files[next(iter(self._files))]  # dicts keep insertion order: the oldest
        self._files[name] = Body(data, content_type)
        return f"{self.root}{PREFIX}{name}"

    def get(self, path: str) -> Body | None:
        """The file at `path` (`/files/{name}`), or None when there is none."""
        if not path.startswith(PREFIX):
            return None
        return self._files.get(path.removeprefix(PREFIX))
