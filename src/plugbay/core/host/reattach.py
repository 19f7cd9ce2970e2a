"""ReattachConfig: everything a new host process needs to reach a running plugin.

It holds the handshake facts (address, protocol, app version, server cert),
the runner's reattach_data() (pid, container id, pod) and, with AutoMTLS, the
client certificate and key the plugin trusts. It is JSON so it can be passed
through an environment variable or a file, like go-plugin's ReattachConfig.
The AutoMTLS key is a secret: store the JSON where only the host can read it.

``attach`` is how this host reaches the runner the JSON names, as go-plugin's
ReattachConfig.ReattachFunc: the runner kind's own ``attach`` with this host's
defaults unless given (e.g. ``functools.partial(KubernetesRunner.attach,
kubeconfig=...)`` for a host that reaches the pod's cluster with a kubeconfig of its
own). It is this host's setting, never part of the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plugbay.errors import ConfigError, printable
from plugbay.core.protocol.checks import kind
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.core.protocol.tls import CertKey

if TYPE_CHECKING:
    from plugbay.runners.base import AttachedRunner, ReattachFunc


# the runners' reattach_data() fields that prove the plugin is the one plugbay made (runners/attached.py's
# plugin_id, runners/reattachkey.py's SECRET): the runners' layer sits above this one, hence the copy
_PROOFS = frozenset({"plugin_id", "reattach_secret"})
# go-plugin's ReattachConfig as its JSON comes (Addr as {"Network", "String"}): refused, and said so
_GO_PLUGIN_FIELDS = frozenset({"Protocol", "ProtocolVersion", "Addr", "Pid", "Test"})


@dataclass(frozen=True)
class ReattachConfig:
    handshake: HandshakeInfo
    runner: Mapping[str, Any] = field(default_factory=dict)
    client_cert: CertKey | None = None
    name: str = "plugin"
    attach: ReattachFunc | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        # a repr reaches logs and tracebacks: the proofs a reattach carries (a process plugin's id, a
        # container's or pod's reattach secret) and the AutoMTLS key would let anyone who reads it
        # reattach, so they are hidden
        runner = {k: "<hidden>" if k in _PROOFS else v for k, v in self.runner.items()}
        return (f"ReattachConfig(handshake={self.handshake!r}, runner={runner!r},"
                f" client_cert={self.client_cert!r}, name={self.name!r})")

    def __post_init__(self) -> None:
        # typed here, not at the first use: ReattachConfig(5) failed later as an AttributeError
        for name, what, ok in (
                ("handshake", "the plugin's HandshakeInfo", isinstance(self.handshake, HandshakeInfo)),
                ("runner", "the runner's reattach_data() (a dict)", isinstance(self.runner, Mapping)),
                ("client_cert", "a CertKey or None", self.client_cert is None or isinstance(self.client_cert, CertKey)),
                ("name", "a str", isinstance(self.name, str)),
                ("attach", "a callable or None", self.attach is None or callable(self.attach))):
            if not ok:
                raise ConfigError(f"ReattachConfig.{name} must be {what}, got {kind(getattr(self, name))}; pass"
                                  " ReattachConfig.from_json(text) with the JSON of Client.reattach_config().to_json()")

    def attached_runner(self, deadline: float | None = None) -> AttachedRunner:
        """The running plugin's runner, from ``attach`` (else its kind's own) given ``runner``; the attach
        ends by ``deadline`` (time.monotonic(): the Client's start_timeout) where the runner can bound it."""
        from plugbay.runners.base import AttachedRunner, starting_until, reattach_runner

        with starting_until(deadline):
            got = reattach_runner(self.runner) if self.attach is None else self.attach(self.runner)
        if not isinstance(got, AttachedRunner):
            raise ConfigError(
                f"ReattachConfig.attach returned {type(got).__name__}, not a runner; it must return the"
                " runner of the running plugin, e.g. functools.partial(KubernetesRunner.attach, kubeconfig=...)")
        return got

    @property
    def protocol(self) -> str:
        return self.handshake.protocol

    @property
    def version(self) -> int:
        return self.handshake.app_version

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.handshake.protocol,
            "version": self.handshake.app_version,
            "handshake": self.handshake.to_dict(),
            "runner": dict(self.runner),
            "client_cert": None if self.client_cert is None else {
                "cert_pem": self.client_cert.cert_pem.decode(),
                "key_pem": self.client_cert.key_pem.decode(),
            },
            "name": printable(self.name),  # what from_dict takes (a Client's own name is printable already)
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, attach: ReattachFunc | None = None) -> ReattachConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"ReattachConfig.from_dict takes a dict, got {kind(data)}; pass the dict"
                              " ReattachConfig.to_dict() gave (for its JSON text: ReattachConfig.from_json)")
        if "handshake" not in data and not _GO_PLUGIN_FIELDS.isdisjoint(data):
            raise ConfigError(
                "this is go-plugin's ReattachConfig (Protocol, ProtocolVersion, Addr, Pid, Test), not plugbay's:"
                " plugbay reattaches only to a plugin a plugbay host started, from the JSON that host's"
                " Client.reattach_config().to_json() gave. go-plugin's names a pid and an address and nothing"
                " that proves the plugin there is the one it names (plugbay's records the process's start time"
                " and the random plugin id it gave it, and the AutoMTLS certificate). Reattach to this plugin"
                " with the go-plugin host that started it, or start it from a plugbay Client and save that"
                " Client's reattach_config().to_json()")
        try:
            info = HandshakeInfo.from_dict(data["handshake"])
            cert = data.get("client_cert")
            client_cert = CertKey(cert["cert_pem"].encode(), cert["key_pem"].encode()) if cert else None
            runner = dict(data.get("runner") or {})
            name = data.get("name", "plugin")
            if not isinstance(name, str):  # str() made a name of any JSON value
                raise TypeError(f"'name' must be a str, got {kind(name)}")
        except ConfigError:  # a field's own check (the handshake facts') says what is wrong already
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"not a plugbay reattach config ({type(exc).__name__}: {exc}); pass the JSON that"
                " Client.reattach_config().to_json() produced"
            ) from exc
        if printable(name) != name:  # it names the plugin in the host's log lines: a "\n" would forge one
            raise ConfigError(f"the reattach config's 'name' holds control or bidi formatting characters (newlines,"
                              f" escapes, bidi overrides): {name!r:.120}; pass the JSON that"
                              " Client.reattach_config().to_json() produced, unedited")
        if client_cert is not None:
            _check_cert_key(client_cert)
        elif info.server_cert is not None:
            # a plugin announces a certificate only when its host gave it one to trust (AutoMTLS), and then it
            # takes no connection without that host's key: the dial would go out in plaintext and wait out
            # the whole start_timeout as a "health service did not report SERVING"
            raise ConfigError(
                "the reattach config's handshake holds the plugin's AutoMTLS certificate but no client_cert: the"
                " plugin accepts only the host certificate and key it was started with, which that JSON's"
                " 'client_cert' holds; pass the JSON that Client.reattach_config().to_json() produced, unedited")
        return cls(handshake=info, runner=runner, client_cert=client_cert, name=name, attach=attach)

    @classmethod
    def from_json(cls, text: str | bytes, *, attach: ReattachFunc | None = None) -> ReattachConfig:
        if isinstance(text, Mapping):
            raise ConfigError("ReattachConfig.from_json takes the JSON text, got a dict; pass the dict"
                              " ReattachConfig.to_dict() gave to ReattachConfig.from_dict(), or the text"
                              " ReattachConfig.to_json() gave here")
        if not isinstance(text, (str, bytes, bytearray)):
            # json.loads would raise a bare TypeError for None (an unset environment variable) or a number
            raise ConfigError(f"ReattachConfig.from_json takes the JSON text, got {kind(text)}; pass the text"
                              " ReattachConfig.to_json() gave (Client.reattach_config().to_json())")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"reattach config is not JSON ({exc}); pass ReattachConfig.to_json() output") from exc
        except RecursionError:  # untrusted input nested deeper than the parser's stack
            raise ConfigError("reattach config JSON is nested too deeply to be a reattach config;"
                              " pass ReattachConfig.to_json() output") from None
        if not isinstance(data, dict):
            raise ConfigError("reattach config JSON must be an object; pass ReattachConfig.to_json() output")
        return cls.from_dict(data, attach=attach)


def _check_cert_key(cert: CertKey) -> None:
    """The AutoMTLS certificate and key must load as a pair: garbage would only show up as a
    handshake that never completes (a HandshakeTimeoutError after the whole start_timeout)."""
    import ssl

    from plugbay.core.protocol.tls import load_chain
    from plugbay.core.transport.certfiles import openssl_said

    try:
        load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert)
    except (ssl.SSLError, ValueError) as exc:
        said = openssl_said(exc) if isinstance(exc, ssl.SSLError) else str(exc)
        raise ConfigError(
            f"the reattach config's client_cert is not a usable certificate and matching private key: {said};"
            " pass the JSON that Client.reattach_config().to_json() produced, unedited") from exc


def unreattachable(name: str, failed: str | None, reattached: bool, killed: bool, exited: str | None) -> str:
    """Why a Client gives no ReattachConfig ("" when it may): what it would name is gone or never was.
    ``exited``: how the plugin ended (its runner's exit_words()), None while it runs."""
    if failed is not None and reattached:  # a failed attach leaves the plugin as it was
        return f"attaching to plugin {name!r} failed ({failed}); the ReattachConfig this Client was given is unchanged"
    why = ("failed to start" if failed is not None else "was killed" if killed
           else f"has {exited}" if exited is not None else "")
    return why and f"plugin {name!r} {why}, so there is nothing to reattach to; make a new Client to run it again"
