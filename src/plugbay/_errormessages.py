"""The messages of the errors plugbay.errors builds from their parts (a plugin's name and exit code, a
handshake line and a reason, ...): what went wrong and what to do, composed here so the hierarchy stays
readable. Below plugbay.errors, which alone uses them; the errors themselves live there."""

from __future__ import annotations

from collections.abc import Sequence

from plugbay._text import clip, listed, tail_text

BEFORE_HANDSHAKE = "before completing the handshake"  # PluginExitedError's default ``when``


def plugin_exited(name: str, exit_code: int | None, stderr_tail: Sequence[str], detail: str, when: str,
                  advice: str | None, headline: str | None) -> str:
    tail = tail_text(stderr_tail) or "    (no output)"
    extra = f"\n{detail}" if detail else ""
    return (
        (headline or f"plugin {name!r} exited with code {exit_code} {when}") +
        f". Its last stderr lines:\n{tail}{extra}\n"
        + (advice if advice is not None else
           "Check that the command is a go-plugin plugin, that it serves with the same"
           " handshake config (magic cookie) as the host, and run it by hand to see why it stops."
           if when == BEFORE_HANDSHAKE else
           # its handshake line says it took the host's magic cookie and began to serve
           "It had started as a plugin; its stderr lines above (or the plugin's own logs) say why it"
           " stopped: run it by hand with the same environment to see more.")
    )


REASON_KEPT = 800  # what a handshake refusal keeps of its reason: clip() cuts the middle beyond


def malformed_handshake(line: str, reason: str, refused: bool) -> str:
    if refused:  # the reason names what was announced; the line is not quoted as malformed
        return f"announced address refused: {clip(reason, REASON_KEPT)}"
    # a plugin may print megabytes on that line, and the reason may quote a field of it; the
    # reason keeps more, as it also carries long socket paths and what to do about them
    return (
        f"malformed handshake line {clip(repr(line))}: {clip(reason, REASON_KEPT)}. go-plugin expects "
        "CORE|APP-VERSION|NETWORK|ADDRESS|PROTOCOL[|SERVER-CERT[|MULTIPLEX]] as the plugin's"
        " first stdout line; make sure the plugin prints nothing to stdout before serving."
    )


def unproven_address(name: str, network: str, address: str, why: str, opt_out: str | None) -> str:
    """The refusal's reason (MalformedHandshakeError's, refused=True)."""
    advice = ("" if opt_out is None else " Have the plugin announce the address its own server listens on; if"
              f" its command hands the serving to a process it does not start (a `docker run` wrapper), {opt_out}")
    return (f"plugin {name!r} announced {network} address {clip(repr(address), 200)}, which plugbay does not dial:"
            f" {why}.{advice}")


def tls_required(name: str, why: str, opt_out: str) -> str:
    return (
        f"plugin {name!r} announced no AutoMTLS certificate, so the connection would be plaintext,"
        f" but TLS is required ({why}). Upgrade the plugin to a go-plugin/plugbay version with"
        " AutoMTLS (go-plugin >= 1.0 serving with PLUGIN_CLIENT_CERT), or, if the path to it is"
        f" private, {opt_out} to accept plaintext."
    )


VERSIONS_ADVICE = "Upgrade the older side, or add a VersionedPlugins entry for a version both understand."


def version_mismatch(host_versions: Sequence[int], plugin_versions: Sequence[int],
                     advice: str = VERSIONS_ADVICE) -> str:
    return (
        f"no common application protocol version: host supports {listed(host_versions)},"
        f" plugin supports {listed(plugin_versions)}. {advice}"
    )


def unknown_plugin(name: str, available: Sequence[str]) -> str:
    return (
        f"unknown plugin type {name!r}; the plugin set has {available}."
        " Use one of those names or add the plugin to the host's plugin set."
    )


def announced_unreachable(reason: str, stderr_tail: Sequence[str]) -> str:
    return reason + (f"\nIts last stderr lines so far:\n{tail_text(stderr_tail)}" if stderr_tail else "")


def restart_budget_exhausted(name: str, restarts: int, window: float, last_failure: str, kind: str) -> str:
    if restarts == 0:  # a policy that allows none (max_restarts=0): nothing failed "again"
        what = (f"plugin {name!r} failed and its RestartPolicy allows no restart (max_restarts=0), so the"
                f" {kind} did not restart it (last failure: {last_failure})")
        raise_it = "raise RestartPolicy.max_restarts"
    else:
        what = (f"plugin {name!r} failed again after {restarts} restart(s) within {window:.0f}s, the"
                f" RestartPolicy's budget, so the {kind} stopped restarting it (last failure: {last_failure})")
        raise_it = "raise RestartPolicy.max_restarts / shorten its window"
    return (f"{what}. Fix the cause (the plugin's stderr, its host or network), then make a new"
            f" {kind}, or {raise_it}.")
