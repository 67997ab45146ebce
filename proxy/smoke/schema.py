"""The part of JSON Schema the smoke test's own schemas use: object, string, array, boolean,
integer, number; `properties`, `required`, `additionalProperties: false`, `items`. Pure.

Enough to say whether a tool call's arguments or a structured answer match the schema the
request gave; the smoke test never validates schemas it did not write.
"""

from __future__ import annotations

from typing import Any, Final

_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def mismatch(value: Any, schema: dict[str, Any], path: str = "") -> str | None:
    """Where and how `value` breaks `schema`, or None when it matches."""
    kind = schema.get("type")
    where = path or "the value"
    if isinstance(kind, str):
        # bool is an int in Python, never a JSON number.
        wrong_bool = isinstance(value, bool) and kind in ("integer", "number")
        if wrong_bool or not isinstance(value, _TYPES[kind]):
            return f"{where} is {_name(value)}, not {kind}"
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                return f"{where} lacks required {key!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(k for k in value if k not in props)
            if extra:
                return f"{where} has {extra[0]!r}, which the schema does not allow"
        for key, sub in props.items():
            if key in value:
                found = mismatch(value[key], sub, f"{path}.{key}" if path else key)
                if found:
                    return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found = mismatch(item, schema["items"], f"{path}[{i}]")
            if found:
                return found
    return None


def _name(value: Any) -> str:
    if value is None:
        return "null"
    for name, types in _TYPES.items():
        if isinstance(value, types) and not (isinstance(value, bool) and name != "boolean"):
            return (
                "a number" if name == "integer" else f"a{'n' if name[0] in 'aeiou' else ''} {name}"
            )
    return type(value).__name__
