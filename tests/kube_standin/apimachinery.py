"""The API conventions the stand-in's resources share, after k8s.io/apimachinery.

Label selectors (``a=b``, ``a!=b``, ``a``, ``!a``) and field selectors
(``metadata.name=x``, ``status.phase!=Running``) as list and watch apply them,
and resource quantities (``512Mi``, ``250m``) as a pod's limits give them.
"""

from __future__ import annotations

from typing import Any

_UNITS = {"Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3}


def parse_quantity(value: Any) -> int:
    text = str(value)
    for unit, mult in _UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(float(text))


def parse_cpu(value: Any) -> int:
    text = str(value)
    if text.endswith("m"):
        return int(float(text[:-1]) * 1_000_000)
    return int(float(text) * 1_000_000_000)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def fields_match(selector: str, obj: dict[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if field_value(obj, key) == value:
                return False
        else:
            key, value = term.replace("==", "=").split("=", 1)
            if field_value(obj, key) != value:
                return False
    return True
