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


def checked_stub(stub: Any, stub_type: type[Any] | None, name: str, owner: str, built_by: str) -> Any:
    """``stub`` if ``stub_type`` is None or ``stub`` is an instance of it; else StubTypeError.

    ``owner`` names the host type in the message ("Client"), ``built_by`` the definition's method that
    built the stub ("grpc_client" or "grpc_client_async": an AsyncClient's stubs are the async ones)."""
    if stub_type is None:
        return stub
    call = f"{owner}.dispense({name!r}, {getattr(stub_type, '__name__', repr(stub_type))})"
    if not isinstance(stub_type, type):
        raise StubTypeError(f"{call}: the second argument must be the stub class, such as the one the plugin"
                            f" definition's {built_by}() returns; got {stub_type!r}. Use dispense({name!r}) for"
                            " an untyped stub", name=name, expected=stub_type)
    try:
        fits = isinstance(stub, stub_type)
    except TypeError as exc:  # a Protocol without @runtime_checkable, a subscripted generic
        raise StubTypeError(f"{call}: {stub_type.__name__} cannot be checked with isinstance() ({exc}); pass the"
                            f" concrete class the plugin definition's {built_by}() returns, or annotate the"
                            f" result of dispense({name!r}) instead", name=name, expected=stub_type) from None
    if not fits:
        got = type(stub)
        same_name = got.__qualname__ == stub_type.__qualname__  # two classes of one name: tell them apart
        got_name = f"{got.__module__}.{got.__qualname__}" if same_name else got.__qualname__
        want_name = f"{stub_type.__module__}.{stub_type.__qualname__}" if same_name else stub_type.__qualname__
        raise StubTypeError(f"{call}: the plugin definition's {built_by}() built a stub of class {got_name},"
                            f" not {want_name} (nor a subclass). Pass the class {built_by}() returns"
                            f" ({got.__qualname__}), or dispense({name!r}) for the stub untyped",
                            name=name, expected=stub_type, built=got)
    return stub
