"""JSON that strict parsers accept: json.dumps writes NaN and infinities as bare NaN/Infinity, which
is not JSON, so every float that is not finite becomes null."""

from __future__ import annotations

import json
import math


def finite_json(obj, indent: int | None = None, on_null=None, default=None) -> str:
    """json.dumps(obj) with non-finite floats as null; on_null(where) is told each one, e.g. "results[0].loss".
    default(value) turns other objects into JSON, as json.dumps's does."""

    def clean(value, where: str):
        if isinstance(value, float) and not math.isfinite(value):
            if on_null is not None:
                on_null(where)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return json.dumps(clean(obj, ""), indent=indent, allow_nan=False, default=default)
