"""NetworkServe: what serve() needs to know to run as a network service (plugbay.core.plugin.network).

Kept apart from network.py so that serve() can read PLUGBAY_NETWORK_* without
loading the network front (netmux, Discovery, the multiplexer): a plugin its
host launches never needs them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from plugbay.core.protocol.records import Frozen
from plugbay.errors import ConfigError, TLSConfigError

if TYPE_CHECKING:  # imported where used: a plugin the host launches never loads it
    from plugbay.core.transport import certfiles

ENV_LISTEN = "PLUGBAY_NETWORK_LISTEN"
ENV_CERT = "PLUGBAY_NETWORK_CERT"
ENV_KEY = "PLUGBAY_NETWORK_KEY"
ENV_CLIENT_CA = "PLUGBAY_NETWORK_CLIENT_CA"
ENV_INSECURE = "PLUGBAY_NETWORK_INSECURE"
ENV_MULTIPLEX = "PLUGBAY_NETWORK_MULTIPLEX"
ENV_KEEPALIVE = "PLUGBAY_NETWORK_KEEPALIVE"  # "INTERVAL,TIMEOUT[,WRITE_TIMEOUT]" in seconds
ENV_MAX_PEER_SESSIONS = "PLUGBAY_NETWORK_MAX_PEER_SESSIONS"
_TRUE = ("1", "t", "T", "true", "True", "TRUE")  # the spellings go's strconv.ParseBool takes
_FALSE = ("0", "f", "F", "false", "False", "FALSE")
# go's yamux figures, as plugbay.core.transport.keepalive.DEFAULT (not imported: serve() loads this
# module at every start, and the keepalive only when brokering)
_KEEPALIVE = (30.0, 10.0)
MAX_SESSIONS = 256  # brokering sessions the front holds at once, all peers (each costs a plugin instance)
# ... from one peer IP address by default: a quarter of them (as streamcap gives one address a quarter of
# the streams), so no one address takes every slot with sessions it keeps alive, and 64 hosts behind
# one address (worker processes of a machine, a NAT) still broker; NetworkServe(max_peer_sessions=)
DEFAULT_MAX_PEER_SESSIONS = MAX_SESSIONS // 4


class NetworkServe(Frozen):
    """serve() on the network. Either all three TLS files, or ``insecure=True``."""

    _fields = ("listen", "cert_file", "key_file", "client_ca_file", "insecure", "allow_shutdown", "multiplex",
               "keepalive", "max_peer_sessions", "stop")
    listen: str
    cert_file: str | None
    key_file: str | None
    client_ca_file: str | None
    insecure: bool
    allow_shutdown: bool
    multiplex: bool  # brokered callbacks for hosts that open a yamux session (needs TLS)
    # a brokering host's session: pinged after this many quiet seconds, dropped (its plugin
    # instance stopped) when nothing answers within the second figure; go's yamux: 30, 10; an
    # optional third: dropped when no byte could be written to it for that long (10 s if not given)
    keepalive: tuple[float, ...]
    # brokering sessions one peer IP address may hold at once (not per certificate: the replicas of a
    # Deployment share one); its next is refused, the host told why. 1..MAX_SESSIONS
    max_peer_sessions: int
    stop: ServeStop | None  # how a program that runs serve() on a thread of its own stops it

    def __init__(self, listen: str = "0.0.0.0:7001", cert_file: str | None = None, key_file: str | None = None,
                 client_ca_file: str | None = None, insecure: bool = False, allow_shutdown: bool = False,
                 multiplex: bool = True, keepalive: tuple[float, ...] = _KEEPALIVE,
                 stop: ServeStop | None = None, max_peer_sessions: int = DEFAULT_MAX_PEER_SESSIONS) -> None:
        # checked here, not where they are used: insecure="false" would read as True (plaintext served to
        # anyone), allow_shutdown="no" likewise (any peer may stop the shared service)
        if not isinstance(listen, str) or not listen.strip():
            raise ConfigError(f"NetworkServe.listen must be 'HOST:PORT' or 'unix:PATH' as a string, got {listen!r};"
                              " e.g. listen='0.0.0.0:7001'")
        listen_target(listen)
        for name, value in (("insecure", insecure), ("allow_shutdown", allow_shutdown), ("multiplex", multiplex)):
            if not isinstance(value, bool):
                raise ConfigError(f"NetworkServe.{name} must be True or False, got {value!r}; pass a bool (insecure="
                                  "True only on a trusted test network: it serves plaintext to anyone)")
        files = {"cert_file": cert_file, "key_file": key_file, "client_ca_file": client_ca_file}
        for name, path in files.items():
            if path is not None and not isinstance(path, (str, os.PathLike)):
                raise ConfigError(f"NetworkServe.{name} must be a file path (or None), got {path!r}")
            text = files[name] = None if path is None else str(os.fspath(path))
            if text is not None and _unnameable(text, os.fsencode):
                raise ConfigError(f"NetworkServe.{name} {text!r:.200} is no path the OS can name (a NUL byte,"
                                  " or a character its file names cannot hold); pass the PEM file's real path")
        if stop is not None and not isinstance(stop, ServeStop):
            raise ConfigError(f"NetworkServe.stop must be a ServeStop or None, got {stop!r:.80}; pass stop=ServeStop()"
                              " and call its stop() to end serve() from another thread")
        if keepalive != _KEEPALIVE:  # imported only then: serve() reads this class at every start
            from plugbay.core.transport.keepalive import Keepalive

            Keepalive.of(keepalive, "NetworkServe keepalive")
        check_peer_sessions(max_peer_sessions, "NetworkServe.max_peer_sessions", "max_peer_sessions=")
        self._set(listen=listen, cert_file=files["cert_file"], key_file=files["key_file"],
                  client_ca_file=files["client_ca_file"],
                  insecure=insecure, allow_shutdown=allow_shutdown, multiplex=multiplex,
                  keepalive=tuple(float(figure) for figure in keepalive), max_peer_sessions=max_peer_sessions,
                  stop=stop)

    @property
    def brokering(self) -> bool:
        """True when serve() puts the brokering front (netmux) on the listener."""
        return self.multiplex and not self.insecure

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NetworkServe | None:
        """The network config PLUGBAY_NETWORK_* describe, or None when PLUGBAY_NETWORK_LISTEN is unset."""
        listen = env.get(ENV_LISTEN, "").strip()
        if not listen:
            return None
        return cls(listen=listen, cert_file=env.get(ENV_CERT) or None, key_file=env.get(ENV_KEY) or None,
                   client_ca_file=env.get(ENV_CLIENT_CA) or None,
                   insecure=env_switch(env, ENV_INSECURE, False),
                   multiplex=env_switch(env, ENV_MULTIPLEX, True),
                   keepalive=keepalive_figures(env.get(ENV_KEEPALIVE, ""), ENV_KEEPALIVE),
                   max_peer_sessions=peer_sessions(env.get(ENV_MAX_PEER_SESSIONS, ""), ENV_MAX_PEER_SESSIONS))

    def tls_files(self) -> certfiles.TLSFiles | None:
        given = [f for f in (self.cert_file, self.key_file, self.client_ca_file) if f]
        if not given:
            return None
        if len(given) != 3:
            raise TLSConfigError(
                "network mode needs all three of cert_file, key_file and client_ca_file, and got"
                f" cert_file={self.cert_file!r}, key_file={self.key_file!r},"
                f" client_ca_file={self.client_ca_file!r}; pass the missing ones (from the environment:"
                f" {ENV_CERT}, {ENV_KEY}, {ENV_CLIENT_CA})")
        assert self.cert_file and self.key_file and self.client_ca_file
        from plugbay.core.transport import certfiles

        return certfiles.TLSFiles(self.cert_file, self.key_file, self.client_ca_file)


class ServeStop:
    """Stops a network serve() from another thread: ``NetworkServe(stop=ServeStop())``, then ``stop()``.

    serve() installs its SIGTERM handler only on the main thread, and a shared service ignores
    GRPCController.Shutdown (unless ``allow_shutdown``): a serve() on a thread of the program's own had
    no way to end. ``stop()`` ends it as SIGTERM does (in-flight calls get their grace, the listener
    closes, serve() returns); asked before serve() started, serve() returns once it has started. One
    ServeStop per serve() run: once asked it stays asked.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked = False
        self._stoppers: list[Callable[[], None]] = []

    @property
    def asked(self) -> bool:
        return self._asked

    def stop(self) -> None:
        """Ask the serve() run that uses it to stop (it returns soon after); idempotent, from any thread."""
        with self._lock:
            self._asked = True
            stoppers = list(self._stoppers)
        for stop in stoppers:
            stop()

    def attach(self, stop: Callable[[], None]) -> None:
        """serve()'s: ``stop`` wakes its wait (called at once when a stop was asked already)."""
        with self._lock:
            self._stoppers.append(stop)
            asked = self._asked
        if asked:
            stop()

    def detach(self, stop: Callable[[], None]) -> None:
        """serve()'s, as it returns: a later stop() reaches it no more."""
        with self._lock:
            if stop in self._stoppers:
                self._stoppers.remove(stop)

    def __repr__(self) -> str:
        return f"ServeStop(asked={self._asked})"


def listen_target(listen: str) -> tuple[str, str]:
    """(the grpcio target, "unix" or "tcp") of a ``listen`` address; ConfigError when it is neither
    ``unix:PATH`` nor ``HOST:PORT`` (ASCII digits: int() fails on '²' and reads '١' as port 1)."""
    # grpcio ends the address at a NUL (127.0.0.1\0:0 bound port 443) and raises a bare
    # UnicodeEncodeError on a lone surrogate; socket.bind a bare ValueError
    if _unnameable(listen, lambda text: text.encode("utf-8")):
        raise ConfigError(f"network listen address {listen!r:.120} holds a NUL byte or a character that is no UTF-8;"
                          " use for example '0.0.0.0:7001' or 'unix:/run/plugin.sock'")
    if listen.startswith("unix:") and len(listen) > 5:
        return listen, "unix"
    host, sep, port = listen.rpartition(":")
    digits = port.isascii() and port.isdigit()
    # only the significant digits go to int(): a port of over 4300 digits (zeros too) is a bare ValueError there
    significant = port.lstrip("0") if digits else ""
    if sep and host and digits and (len(significant) > 5 or int(significant or "0") > 65535):
        raise ConfigError(f"network listen address {listen!r:.120}: port {port[:12]}{'...' if len(port) > 12 else ''}"
                          " is out of range 0-65535 (0: any free port); use for example '0.0.0.0:7001'")
    if not sep or not host or not digits:
        raise ConfigError(f"network listen address {listen!r:.120} is not HOST:PORT; use for example"
                          " '0.0.0.0:7001', '127.0.0.1:0' (any free port), '[::]:7001' or 'unix:/path'")
    _check_host(listen, host)
    return f"{host}:{int(significant or '0')}", "tcp"


def _check_host(listen: str, host: str) -> None:
    """A host the resolver can be asked about: Python's idna codec raises a bare UnicodeError (no OSError, so
    no listen failure of ours) for a name with an empty label ('.a', 'a..b') or one over 63 characters."""
    try:
        host.strip("[]").encode("idna")
    except UnicodeError:
        raise ConfigError(f"network listen address {listen!r:.120}: {host!r:.80} is no valid host name (a part"
                          " between dots is empty or longer than 63 characters); listen on an IP of this machine"
                          " ('0.0.0.0' or '[::]' for all of them, '127.0.0.1' for this machine only) or a name it"
                          " resolves, e.g. '0.0.0.0:7001'") from None


def _unnameable(text: str, encode: Callable[[str], bytes]) -> bool:
    try:
        return b"\0" in encode(text)
    except UnicodeError:
        return True


def env_switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off variable: 1/t/true or 0/f/false, as go's strconv.ParseBool (unset or empty: ``default``).
    Anything else is a ConfigError: PLUGBAY_NETWORK_MULTIPLEX=no turned brokering off and =yes did too,
    without a word."""
    text = env.get(name, "").strip()
    if not text:
        return default
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{name}={text[:40]!r} is neither on nor off; set {name}=1 (on) or {name}=0 (off)")


def keepalive_figures(text: str, setting: str) -> tuple[float, ...]:
    """``INTERVAL,TIMEOUT[,WRITE_TIMEOUT]`` (seconds) from a setting's text; empty: go's yamux figures
    (30, 10; the write timeout 10)."""
    if not text.strip():
        return _KEEPALIVE
    try:
        figures = tuple(float(part) for part in text.split(","))
    except ValueError:
        figures = ()
    if len(figures) not in (2, 3) or not all(figure > 0 for figure in figures):
        raise ConfigError(f"{setting}={text.strip()!r} is not INTERVAL,TIMEOUT[,WRITE_TIMEOUT] in seconds, all"
                          " > 0; set it like '30,10' (ping a brokering host's quiet session after 30 s, drop"
                          " it when nothing answers within 10 s; 'inf,10' turns that off) or '30,10,10' (and"
                          " drop it when no byte could be written to it for 10 s, the default)")
    return figures


def check_peer_sessions(value: object, setting: str, how: str) -> int:
    """``value`` as a per-address session cap (an int in 1..MAX_SESSIONS); ConfigError naming ``setting``,
    and ``how`` to pass it, otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SESSIONS:
        raise ConfigError(f"{setting} must be a whole number from 1 to {MAX_SESSIONS} (brokering sessions one"
                          f" peer IP address may hold at once; the process holds at most {MAX_SESSIONS}), got"
                          f" {value!r:.80}; pass for example {how}{DEFAULT_MAX_PEER_SESSIONS} (the default), more"
                          " when many hosts share one address (a machine's worker processes, a NAT)")
    return value


def peer_sessions(text: str, setting: str) -> int:
    """A per-address session cap from a setting's text (ASCII digits); empty: the default."""
    text = text.strip()
    if not text:
        return DEFAULT_MAX_PEER_SESSIONS
    value: object = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else text
    return check_peer_sessions(value, setting, f"{setting}=")
