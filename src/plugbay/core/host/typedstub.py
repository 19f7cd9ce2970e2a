"""dispense(name, stub_type): the stub a plugin definition built, checked to be the class the caller names.

``dispense(name)`` goes by a name, so a type checker cannot know which plugin definition, and so which stub
class, it reaches: it is ``Any``. Given the class too, every host type (Client, AsyncClient, Supervisor,
AsyncSupervisor, RemoteClient, AsyncRemoteClient, PluginContainer) types the answer as that class, and this
module makes it true at run time: a stub of another class is refused at the dispense, not at its first call
as an AttributeError far from the cause.
"""

from __future__ import annotations

from typing import Any, TypeVar

from plugbay.errors import StubTypeError

StubT = TypeVar("StubT")


def check_stub_type(stub_type: type[Any] | None, name: str, owner: str, built_by: str) -> None:
    """Refuse a ``stub_type`` that is no class isinstance() can check: first thing in every host type's
    dispense(), so that a wrong argument starts, dials or builds nothing (it was refused only after the plugin
    started). ``owner`` names the host type in the message ("Client"), ``built_by`` the definition's method
    that builds the stub ("grpc_client" or "grpc_client_async": an AsyncClient's stubs are the async ones)."""
    if stub_type is None:
        return
    if not isinstance(stub_type, type):
        raise StubTypeError(f"{_call(owner, name, stub_type)}: the second argument must be the stub class, such as"
                            f" the one the plugin definition's {built_by}() returns; got {stub_type!r}. Use"
                            f" dispense({name!r}) for an untyped stub", name, stub_type)
    _fits(_PROBE, stub_type, name, owner, built_by)  # a Protocol without @runtime_checkable raises here


def checked_stub(stub: Any, stub_type: type[Any] | None, name: str, owner: str, built_by: str) -> Any:
    """``stub`` if ``stub_type`` is None or ``stub`` is an instance of it; else StubTypeError. ``stub_type``
    passed check_stub_type() before the stub was built."""
    if stub_type is None or _fits(stub, stub_type, name, owner, built_by):
        return stub
    got = type(stub)
    same_name = got.__qualname__ == stub_type.__qualname__  # two classes of one name: tell them apart
    got_name = f"{got.__module__}.{got.__qualname__}" if same_name else got.__qualname__
    want_name = f"{stub_type.__module__}.{stub_type.__qualname__}" if same_name else stub_type.__qualname__
    raise StubTypeError(f"{_call(owner, name, stub_type)}: the plugin definition's {built_by}() built a stub of"
                        f" class {got_name}, not {want_name} (nor a subclass). Pass the class {built_by}() returns"
                        f" ({got.__qualname__}), or dispense({name!r}) for the stub untyped", name, stub_type, got)


_PROBE = object()  # what check_stub_type() asks isinstance() about, before there is a stub


def _call(owner: str, name: str, stub_type: object) -> str:
    return f"{owner}.dispense({name!r}, {getattr(stub_type, '__name__', repr(stub_type))})"


def _fits(stub: object, stub_type: type[Any], name: str, owner: str, built_by: str) -> bool:
    try:
        return isinstance(stub, stub_type)
    except TypeError as exc:  # a Protocol without @runtime_checkable, a subscripted generic
        raise StubTypeError(f"{_call(owner, name, stub_type)}: {stub_type.__name__} cannot be checked with"
                            f" isinstance() ({exc}); pass the concrete class the plugin definition's {built_by}()"
                            f" returns, or annotate the result of dispense({name!r}) instead", name,
                            stub_type) from None
