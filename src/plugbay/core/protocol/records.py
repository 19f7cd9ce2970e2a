"""Plain value classes for the plugin's start path: dataclass behaviour without dataclass creation.

Creating a dataclass writes and compiles its methods at import (~1 ms each),
and a plugin process made seven of them (plus the dataclasses import) before
its handshake line. The classes on that path (HandshakeConfig, HandshakeInfo,
ServeConfig, NetworkServe, BrokerTransport, Endpoint, Listening) write their
own typed ``__init__`` and take equality, hashing, repr and immutability from
here, behaving as ``@dataclass`` / ``@dataclass(frozen=True)`` did for them:

* ``==`` compares the ``_fields`` of two instances of the same class;
* ``repr`` is ``Name(field=value, ...)``;
* a :class:`Frozen` instance rejects attribute assignment and deletion (an
  AttributeError, as dataclasses' FrozenInstanceError is), hashes its fields,
  and :meth:`Frozen.replace` makes a changed copy;
* a :class:`Record` is mutable and unhashable, like a non-frozen dataclass.
"""

from __future__ import annotations

from typing import Any, TypeVar

_F = TypeVar("_F", bound="Frozen")


class Record:
    """Equality and repr over ``_fields`` (the constructor's parameters, in order)."""

    _fields: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, like a dataclass with eq

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({inner})"


class Frozen(Record):
    """A :class:`Record` whose fields cannot change after ``__init__`` (set them with ``_set``)."""

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {self.__class__.__name__} is frozen;"
                             " make a changed copy with .replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {self.__class__.__name__} is frozen")

    def __hash__(self) -> int:  # type: ignore[override]  # frozen: hashable again
        return hash(self._values())

    def replace(self: _F, **changes: Any) -> _F:
        """A copy with ``changes`` applied (what ``dataclasses.replace`` did)."""
        unknown = set(changes) - set(self._fields)
        if unknown:
            raise TypeError(f"{self.__class__.__name__} has no field(s) {sorted(unknown)}")
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return self.__class__(**values)
