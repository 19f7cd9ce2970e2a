"""Names that moved to modules of their own stay importable from their old homes (re-exports),
and are the same objects there, so user code and the public export table keep working."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    # (old home, name, new home)
    ("plugbay.core.host.client", "cleanup_clients", "plugbay.core.host.live"),
    ("plugbay", "cleanup_clients", "plugbay.core.host.live"),
    ("plugbay.core.resilience.supervisor", "ClientMaker", "plugbay.core.resilience.sources"),
    # the multiplexed connection, split by side (plugbay.core.transport.mux names them all)
    ("plugbay.core.transport.mux", "MuxSession", "plugbay.core.transport.muxsession"),
    ("plugbay.core.transport.mux", "PluginFront", "plugbay.core.transport.muxplugin"),
    ("plugbay.core.transport.mux", "AcceptedSession", "plugbay.core.transport.muxplugin"),
    ("plugbay.core.transport.mux", "plugin_front", "plugbay.core.transport.muxplugin"),
    ("plugbay.core.transport.mux", "HostMux", "plugbay.core.transport.muxhost"),
    ("plugbay.core.transport.mux", "StreamBridge", "plugbay.core.transport.muxbridge"),
    # the channel's typed call errors, in a module of their own (the ~400-line rule)
    ("plugbay.core.host.channel", "CallTimeout", "plugbay.core.host.callerrors"),
    ("plugbay.core.host.channel", "ClientClosed", "plugbay.core.host.callerrors"),
    ("plugbay.core.host.channel", "PluginDied", "plugbay.core.host.callerrors"),
    ("plugbay.core.host.channel", "Unavailable", "plugbay.core.host.callerrors"),
    # what serve() serves, in a module of its own (the ~400-line rule)
    ("plugbay.core.plugin.server", "ServeConfig", "plugbay.core.plugin.serveconfig"),
    ("plugbay.core.plugin.server", "protocol_version", "plugbay.core.plugin.serveconfig"),
    ("plugbay", "ServeConfig", "plugbay.core.plugin.serveconfig"),
    # the plugin command's check and executable lookup, in a module of their own (the ~400-line rule)
    ("plugbay.runners.process", "check_cmd", "plugbay.runners.command"),
    ("plugbay.runners.process", "resolve_executable", "plugbay.runners.command"),
    # asyncio servicers' loop, shared with brokered servers (a lower layer)
    ("plugbay.core.plugin.aiohandlers", "HandlerLoop", "plugbay.core.transport.aiohandlers"),
    ("plugbay.core.plugin.aiohandlers", "LOOP", "plugbay.core.transport.aiohandlers"),
    ("plugbay.core.plugin.aiohandlers", "sync_handler", "plugbay.core.transport.aiohandlers"),
    # what the calls a Supervisor's kill ends are told, in a module of their own (the ~400-line rule)
    ("plugbay.core.resilience.readygate", "mark_restarting", "plugbay.core.resilience.endedcalls"),
    ("plugbay.core.resilience.readygate", "mark_stopping", "plugbay.core.resilience.endedcalls"),
    # what the network front keeps per host session, in a module of their own (the ~400-line rule)
    ("plugbay.core.plugin.netmux", "Instance", "plugbay.core.plugin.frontsession"),
    ("plugbay.core.plugin.netmux", "FrontSession", "plugbay.core.plugin.frontsession"),
    ("plugbay.core.plugin.netmux", "InstanceSession", "plugbay.core.plugin.frontsession"),
    ("plugbay.core.plugin.netmux", "instance_sessions", "plugbay.core.plugin.frontsession"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_is_the_same_object_at_its_old_home(old: str, name: str, new: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)

