"""What a failed DNS query says: the DNS library's errors, per nameserver, in words that say what happened."""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.message
import dns.resolver

__all__ = ["answered_codes", "failure_text", "unanswered"]

# A TCP query that met these never reached a server serving TCP on that port (nothing listens, no route
# to it, or a firewall drops it): only then is "serve TCP" the advice. A timeout is one only when the
# lookup's own time had not run out on it (_cut_short)
_TCP_UNSERVED = (OSError, EOFError, dns.exception.Timeout)

# What to do when the lookup's time ran out before the TCP query that a truncated answer needs ended
_MORE_TIME = ("give the lookup more time (DNSResolver's timeout; start_timeout while discovery starts), or have"
              " that server answer within a UDP datagram (fewer records)")


def _server_name(server: object, port: object) -> str:
    """A nameserver as dnspython's errors name it ("Do53:127.0.0.1@5353", or an IP) as "127.0.0.1:5353"."""
    text = str(server)
    if text.startswith("Do53:"):
        text = text[len("Do53:"):].rsplit("@", 1)[0]
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _error_text(error: object) -> str:
    if isinstance(error, str):  # a response code: "SERVFAIL"
        return f"answered {error}"
    return str(error).rstrip(". ") or type(error).__name__


# What a DNS server's error code says: it was reached and answered, so "is it reachable" is not the question
_RCODES = {
    "SERVFAIL": "SERVFAIL is a server failure: the server could not resolve the name (its zone or its upstream"
                " servers failed it, or DNSSEC validation did); that server's logs say why",
    "REFUSED": "REFUSED is a refusal: the server will not answer that query; check that it serves that name and"
               " lets this host ask (its allow-query or recursion settings), or name the DNS server that does",
}


def answered_codes(exc: Exception) -> list[str]:
    """What the error codes the DNS servers answered a failed query with mean ("SERVFAIL (a server failure:
    ...)"), when every server answered with one; [] otherwise (a server that did not answer, a truncation)."""
    errors = [e for e in getattr(exc, "kwargs", {}).get("errors") or () if isinstance(e, tuple) and len(e) >= 4]
    if not errors or not all(isinstance(e[3], str) for e in errors):
        return []
    return list(dict.fromkeys(_RCODES.get(e[3], f"{e[3]}: check that the server serves that name") for e in errors))


def _mid_sentence(text: str) -> str:
    """An error's text after words of ours ("over TCP the truncated flag is set"): a capitalised first
    word goes lower case; "[Errno 113] ..." and names ("SERVFAIL", "DNS") stay as they are."""
    return text[0].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text


def _cut_short(exc: Exception, errors: list[tuple[Any, ...]], error: tuple[Any, ...]) -> bool:
    """Whether ``error`` is a timeout the lookup's own time running out caused: the lookup's last query
    timed out and the lookup ended on its time (dnspython gives no query a moment past it)."""
    return isinstance(exc, dns.resolver.LifetimeTimeout) and isinstance(error[3], dns.exception.Timeout) \
        and errors[-1] is error


def unanswered(exc: Exception) -> bool:
    """Whether a failed query got no answer from any DNS server (each timed out or could not be sent): the
    server is unreachable, as a cluster's API server that does not answer is, not one that answered with an
    error code (SERVFAIL, REFUSED) or with too large an answer."""
    if isinstance(exc, (OSError, EOFError, dns.exception.Timeout)):  # LifetimeTimeout is a Timeout
        errors = [e for e in getattr(exc, "kwargs", {}).get("errors") or () if isinstance(e, tuple) and len(e) >= 4]
        return all(isinstance(e[3], _TCP_UNSERVED) for e in errors)
    if isinstance(exc, dns.resolver.NoNameservers):
        errors = [e for e in exc.kwargs.get("errors") or () if isinstance(e, tuple) and len(e) >= 4]
        return bool(errors) and all(isinstance(e[3], _TCP_UNSERVED) for e in errors)
    return False


def failure_text(name: str, kind: str, exc: Exception) -> tuple[str, bool]:
    """A failed query as its error names it, and whether that text says what to do itself.

    An answer too large for a UDP datagram comes truncated, and the query is asked again over TCP at the
    same server; the DNS library's words for that ("answered ; ... Connection refused") read as a server
    that is unreachable although it answered. So each server is named with what happened there, in order:
    "serve TCP" only where the TCP query met no TCP service, the other errors as they are, and the
    lookup's time running out (which may come before the TCP query is made) last."""
    errors = [e for e in getattr(exc, "kwargs", {}).get("errors") or () if isinstance(e, tuple) and len(e) >= 4]
    if errors and all(isinstance(e[3], str) for e in errors):  # every server answered, with an error code
        answers = dict.fromkeys(f"{_server_name(e[0], e[2])} answered {e[3]}" for e in errors)  # once per server
        return f"{name} {kind}: {'; '.join(answers)}", True  # answered_codes() says what the codes mean
    if not any(isinstance(e[3], dns.message.Truncated) and not e[1] for e in errors):
        return f"{name} {kind}: {type(exc).__name__}: {exc}", False
    per_server: dict[str, list[tuple[Any, ...]]] = {}  # (server, over TCP, port, error, response), in order
    for e in errors:
        per_server.setdefault(_server_name(e[0], e[2]), []).append(e)
    said, advised = [], True
    for server, errs in per_server.items():
        parts: list[str] = []
        truncated = other = False
        for i, e in enumerate(errs):
            if i and isinstance(errs[i - 1][3], dns.message.Truncated) and not errs[i - 1][1] and e[1]:
                continue  # the TCP query after a truncated answer: said with it
            if not (isinstance(e[3], dns.message.Truncated) and not e[1]):
                parts.append(f"over TCP {_mid_sentence(_error_text(e[3]))}" if e[1] else _error_text(e[3]))
                other = True
                continue
            truncated = True
            retry = errs[i + 1] if i + 1 < len(errs) and errs[i + 1][1] else None
            if retry is None:  # the lookup's time ran out before it (said last)
                parts.append("answered too large for UDP (truncated), and the query over TCP that must follow"
                             f" was not made: {_MORE_TIME}")
            elif _cut_short(exc, errors, retry):  # no sign that TCP is not served: it had no time
                parts.append("answered too large for UDP (truncated), and the query over TCP that must follow"
                             f" was cut short when the lookup's time ran out: {_MORE_TIME}")
            elif isinstance(retry[3], _TCP_UNSERVED):
                parts.append("answered too large for UDP (truncated), and the query over TCP that must follow"
                             f" failed ({_error_text(retry[3])}): that server must also serve TCP on its port,"
                             " or answer with fewer records")
            else:
                parts.append("answered too large for UDP (truncated), and over TCP"
                             f" {_mid_sentence(_error_text(retry[3]))}: check that it serves that name over TCP too")
        advised = advised and truncated and not other  # all this server's failures said what to do
        said.append(f"{server}: {', then '.join(parts)}")
    if isinstance(exc, dns.resolver.LifetimeTimeout):
        said.append(f"the lookup's time ran out after {exc.kwargs.get('timeout', 0.0):.1f} s")
    return f"{name} {kind}: {'; '.join(said)}", advised
