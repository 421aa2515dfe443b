"""Strict JSON for everything sglang_fair writes: results files, the simulator's ``--json``,
cost-model files and the ``GET /fair/state`` answer.

JSON has no NaN or infinity.  Python's ``json`` writes them anyway (``NaN``, ``Infinity``), which
strict parsers (browsers, ``jq``, most languages) reject, so a results file full of good numbers
becomes unreadable because one rate was not measured.  Here a non-finite number is written as
``null``, with the reason beside it:

* under key ``"k"`` of an object: ``"k": null`` and, right after it, ``"k_nonfinite": "NaN"``
  (or ``"Infinity"``, ``"-Infinity"``), e.g. ``"saturation_rps": null, "saturation_rps_nonfinite":
  "NaN"`` when the saturation rate was not measured;
* inside a list (lists of lists too) under key ``"k"``: each such item is ``null`` and
  ``"k_nonfinite"`` maps the item's position, indexes joined by ``/``, to its spelling, e.g.
  ``"ratios": [1.2, null], "ratios_nonfinite": {"1": "Infinity"}``.

A non-finite number with no object key around it (a bare number, or a list at the top) has
nowhere to keep its reason and is a ``ValueError``, as is a ``k_nonfinite`` key that is already
taken.  Reading back: ``null`` plus a ``*_nonfinite`` sibling is NaN or an infinity; ``null``
without one is a real ``None``.

Other conversions: tuples become lists, numpy scalars and arrays become Python numbers and lists
(``.tolist()``), object keys follow ``json`` (str as is; int, float, bool, None spelled as JSON).
Anything else is a ``TypeError`` unless ``other`` converts it (``GET /fair/state`` passes ``str``
so that a status page never fails on an odd value).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

__all__ = ["NONFINITE_SUFFIX", "dumps", "to_json_types", "write"]

#: Suffix of the key that says why its sibling is ``null``.
NONFINITE_SUFFIX = "_nonfinite"


def _spelling(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


class _Converter:
    def __init__(self, other: Callable[[Any], Any] | None) -> None:
        self.other = other

    def key(self, key) -> str:
        if isinstance(key, str):
            return key
        if key is None or isinstance(key, (bool, int, float)):
            return json.dumps(key)  # the spelling json.dump gives such keys
        if self.other is not None:
            return str(self.other(key))
        raise TypeError(f"object key {key!r} ({type(key).__name__}) is not JSON")

    def value(self, value, nonfinite: dict[str, str], position: str):
        """``value`` as plain JSON types; non-finite floats become None and are recorded in
        ``nonfinite`` under their position within the enclosing key ('' for the value itself)."""
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            nonfinite[position] = _spelling(value)
            return None
        if isinstance(value, dict):
            return self.mapping(value)
        if isinstance(value, (list, tuple)):
            sep = "/" if position else ""
            return [self.value(item, nonfinite, f"{position}{sep}{i}") for i, item in enumerate(value)]
        if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar or array
            return self.value(value.tolist(), nonfinite, position)
        if self.other is not None:
            return self.value(self.other(value), nonfinite, position)
        raise TypeError(f"{value!r} ({type(value).__name__}) is not JSON")

    def mapping(self, data: dict) -> dict:
        out: dict[str, Any] = {}
        keys = {self.key(k) for k in data}
        for key, value in data.items():
            key = self.key(key)
            nonfinite: dict[str, str] = {}
            out[key] = self.value(value, nonfinite, "")
            if nonfinite:
                reason_key = key + NONFINITE_SUFFIX
                if reason_key in keys:
                    raise ValueError(f"cannot record why {key!r} is null: key {reason_key!r} is taken")
                out[reason_key] = nonfinite[""] if "" in nonfinite else nonfinite
        return out


def to_json_types(data, *, other: Callable[[Any], Any] | None = None):
    """``data`` as plain JSON types with non-finite numbers as ``null`` and their reason beside
    (the module's convention); raises ``ValueError`` where no key can hold the reason."""
    nonfinite: dict[str, str] = {}
    out = _Converter(other).value(data, nonfinite, "")
    if nonfinite:
        where = ", ".join(f"[{p}]" if p else "the top level" for p in nonfinite)
        raise ValueError(f"non-finite number outside any object key (at {where}): nowhere to write its reason")
    return out


def dumps(data, *, indent: int | None = 1, sort_keys: bool = False, other: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of ``data`` (``allow_nan=False``: the output never holds NaN or Infinity)."""
    return json.dumps(to_json_types(data, other=other), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write(path: str | os.PathLike, data, *, indent: int | None = 1, sort_keys: bool = False,
          other: Callable[[Any], Any] | None = None) -> None:
    """Write ``data`` to ``path`` as strict JSON and a final newline (see :func:`dumps`)."""
    text = dumps(data, indent=indent, sort_keys=sort_keys, other=other)
    with open(path, "w") as handle:
        handle.write(text + "\n")
