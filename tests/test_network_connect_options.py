"""connect(target, handshake=..., **options): the options are RemoteConfig's fields, typed so that a type
checker catches a misspelled one (tests/test_public_typing.py runs mypy on that), and refused at run time
with a ConfigError listing the valid names (it was the dataclass's bare TypeError)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tests.net_util import HANDSHAKE, PLUGINS

from plugbay import ConfigError
from plugbay.network import RemoteConfig, RemoteOptions, connect


def test_a_misspelled_option_is_a_config_error_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        connect("static:///127.0.0.1:1", handshake=HANDSHAKE, plugins=PLUGINS, insecur=True)  # type: ignore[call-arg]
    text = str(err.value)
    assert "connect() has no option 'insecur' (did you mean insecure?)" in text
    assert "its options are RemoteConfig's fields: plugins, versioned_plugins, tls, insecure," in text
    assert "'target'" not in text and " handshake," not in text  # connect's own arguments, not options


def test_two_unknown_options_are_both_named() -> None:
    with pytest.raises(ConfigError, match=r"no option 'bogus', 'timeout' \(did you mean"):
        connect("static:///127.0.0.1:1", handshake=HANDSHAKE, bogus=1, timeout=2)  # type: ignore[call-arg]


def test_the_typed_options_are_remote_configs_fields_with_their_types() -> None:
    fields = {f.name: f for f in dataclasses.fields(RemoteConfig) if f.name not in ("target", "handshake")}
    assert list(RemoteOptions.__annotations__) == list(fields)
    assert RemoteOptions.__required_keys__ == frozenset()  # each keeps RemoteConfig's default
    config_hints = typing.get_type_hints(RemoteConfig)
    option_hints = typing.get_type_hints(RemoteOptions)
    assert {name: option_hints[name] for name in fields} == {name: config_hints[name] for name in fields}
