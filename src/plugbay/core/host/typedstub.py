"""dispense(name, stub_type): the stub a plugin definition built, checked to be the class the caller names.

``dispense(name)`` goes by a name, so a type checker cannot know which plugin definition, and so which stub
class, it reaches: it is ``Any``. Given the class too, every host type (Client, AsyncClient, Supervisor,
AsyncSupervisor, RemoteClient, AsyncRemoteClient, PluginContainer) types the answer as that class, and this
module makes it true at run time: a stub of another class is refused at the dispense, not at its first call
as an AttributeError far from the cause.
"""

from __future__ import annotations

from typing import Any, TypeVar, get_origin

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
        what = ("a subscripted generic, which isinstance() cannot check: pass the plain class"
                if get_origin(stub_type) is not None else "no class: pass the stub class")
        raise StubTypeError(f"{_call(owner, name, stub_type)}: the second argument is {what}, such as the one the"
                            f" plugin definition's {built_by}() returns, or use dispense({name!r}) for an untyped"
                            " stub", name, stub_type)
    _fits(_PROBE, stub_type, name, owner, built_by)  # a Protocol without @runtime_checkable raises here


def checked_stub(stub: Any, stub_type: type[Any] | None, name: str, owner: str, built_by: str) -> Any:
    """``stub`` if ``stub_type`` is None or ``stub`` is an instance of it; else StubTypeError. ``stub_type``
    passed check_stub_type() before the stub was built."""
    if stub_type is None or _fits(stub, stub_type, name, owner, built_by):
        return stub
    got = type(stub)
    got_name, want_name, same = _told_apart(got, stub_type)
    raise StubTypeError(f"{_call(owner, name, stub_type)}: the plugin definition's {built_by}() built a stub of"
                        f" class {got_name}, not {want_name} (nor a subclass){same}. Pass the class {built_by}()"
                        f" returns ({got_name}), or dispense({name!r}) for the stub untyped", name, stub_type, got)


_PROBE = object()  # what check_stub_type() asks isinstance() about, before there is a stub


def _call(owner: str, name: str, stub_type: object) -> str:
    # a class by its name; anything else as written (a subscripted generic's __name__ is its origin's: Optional)
    shown = stub_type.__qualname__ if isinstance(stub_type, type) else repr(stub_type)
    return f"{owner}.dispense({name!r}, {shown})"


def _told_apart(got: type, want: type) -> tuple[str, str, str]:
    """The two classes' names as the message gives them, and what it adds when they share a name."""
    if got.__qualname__ != want.__qualname__:
        return got.__qualname__, want.__qualname__, ""
    got_name, want_name = f"{got.__module__}.{got.__qualname__}", f"{want.__module__}.{want.__qualname__}"
    if got_name != want_name:
        return got_name, want_name, ""
    return (f"{got_name} at {id(got):#x}", f"{want_name} at {id(want):#x}",
            ": another class of the same name, e.g. from a reloaded module")


def _fits(stub: object, stub_type: type[Any], name: str, owner: str, built_by: str) -> bool:
    try:
        return isinstance(stub, stub_type)
    except TypeError as exc:  # a Protocol without @runtime_checkable (a subscripted generic is no class: refused)
        raise StubTypeError(f"{_call(owner, name, stub_type)}: {stub_type.__qualname__} cannot be checked with"
                            f" isinstance() ({exc}); pass the concrete class the plugin definition's {built_by}()"
                            f" returns, or annotate the result of dispense({name!r}) instead", name,
                            stub_type) from None
