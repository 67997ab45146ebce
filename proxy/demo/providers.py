"""The two fake providers the demo starts, the old one and the new gateway: how each is started
and how it differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The ids the app asks for; the new gateway knows them under its own prefix.
CHAT_MODEL: Final = "gpt-4o-mini"
EMBEDDING_MODEL: Final = "text-embedding-3-small"
OLD_KEY: Final = "sk-local-old"
NEW_KEY: Final = "sk-local-new"


@dataclass(frozen=True, slots=True)
class FakeSpec:
    """How one fake provider is started (`python -m proxy fake`) and described."""

    name: str
    api_key: str
    model_prefix: str  # the provider's ids are this + the OpenAI id
    latency: float  # seconds to response headers, or to a stream's first event
    chunk_delay: float  # seconds between stream events
    error_rate: float  # share answered with a 500
    variant: int  # 0 answers like the old provider; others reword

    def args(self, seed: int) -> list[str]:
        models = f"{self.model_prefix}{CHAT_MODEL},{self.model_prefix}{EMBEDDING_MODEL}"
        return [
            "fake", "--name", self.name, "--api-key", self.api_key, "--models", models,
            "--latency", str(self.latency), "--chunk-delay", str(self.chunk_delay),
            "--error-rate", str(self.error_rate), "--variant", str(self.variant),
            "--seed", str(seed),
        ]  # fmt: skip

    def about(self) -> str:
        parts = [
            f"ids {self.model_prefix}{CHAT_MODEL}, {self.model_prefix}{EMBEDDING_MODEL}",
            f"{self.latency * 1000:.0f} ms to first token",
        ]
        if self.error_rate:
            parts.append(f"{self.error_rate:.0%} errors")
        if self.variant:
            parts.append("reworded answers")
        return "; ".join(parts)


# The old provider is the fast, boring one the app uses today. The new gateway differs the way
# gateways do: its own model ids, a slower first token, a few 500s, other wording. (The fakes
# have one fixed latency, no jitter. 150 ms more to the first token is a slowdown a user feels:
# the report counts one only from 50 ms and 10% more, so 45 ms would pass.)
OLD: Final = FakeSpec("old", OLD_KEY, "", 0.015, 0.002, 0.0, 0)
NEW: Final = FakeSpec("new", NEW_KEY, "acme/", 0.165, 0.003, 0.03, 1)
