"""A localhost sidecar that splits, shadows, records and rolls back LLM traffic."""

__version__ = "0.1.0"
