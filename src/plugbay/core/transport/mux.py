"""The multiplexed connection (PLUGIN_MULTIPLEX_GRPC), as go-plugin's internal/grpcmux.

The host opens ONE connection to the plugin's announced address and runs a
yamux session over it (plugbay.core.transport.yamux). The plugin's main gRPC
connection is a stream of that session; so is every brokered connection,
in either direction, so brokering works wherever the main address works: a
unix socket in a bind mount, a published port, a port-forward.

This module names the parts; each lives in a module of its own:
muxsession (MuxSession: routing and opening streams; the broker owns the knock
protocol and tells it where the peer's next stream goes), muxplugin (the plugin
side: PluginFront, AcceptedSession, ``plugin_front``, serve()'s seam), muxhost
(the host side: HostMux) and muxbridge (StreamBridge: a local listener whose
connections ride streams).
"""

from __future__ import annotations

from plugbay.core.transport.muxbridge import StreamBridge
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.muxplugin import AcceptedSession, PluginFront, plugin_front
from plugbay.core.transport.muxsession import MuxSession

__all__ = ["AcceptedSession", "HostMux", "MuxSession", "PluginFront", "StreamBridge", "plugin_front"]
