from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionedPluginSet(_message.Message):
    __slots__ = ("version", "plugins")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    version: int
    plugins: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., plugins: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("core_protocol", "protocol", "versions", "multiplex", "server")
    CORE_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MULTIPLEX_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    core_protocol: int
    protocol: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionedPluginSet]
    multiplex: bool
    server: str
    def __init__(self, core_protocol: _Optional[int] = ..., protocol: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionedPluginSet, _Mapping]]] = ..., multiplex: _Optional[bool] = ..., server: _Optional[str] = ...) -> None: ...
