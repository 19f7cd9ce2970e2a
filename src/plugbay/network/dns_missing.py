"""What a DNS lookup that found no endpoint says: the names it asked that have no records (an alias named by its
target), answers that name no replica, and the SRV slip of a name asked without _SERVICE._PROTO."""

from __future__ import annotations

from typing import Any

import dns.exception

__all__ = ["aliased", "empty_text"]


def aliased(asked: Any, response: Any) -> str:
    """``asked`` as the note names it: an alias (CNAME) whose target has no records is named with that
    target, since the target is the name to publish or fix, not the alias the host was given."""
    text = str(asked).rstrip(".")
    try:
        target = response.canonical_name() if response is not None else asked
    except dns.exception.DNSException:  # a CNAME loop: the name asked is all there is to say
        return text
    return text if target == asked else f"{str(target).rstrip('.')} (the target of the alias {text})"


def empty_text(server: str, host: str, refused: list[str], missing: dict[str, list[str]], srv_none: str) -> str:
    """Why a lookup of ``host`` at ``server`` found no endpoint: records that name no replica (``refused``),
    else the names without records (``missing``: name -> ["NXDOMAIN"], ["."] for an SRV answer of no service,
    or the kinds it has no records of); ``srv_none``: how the name's own SRV query found none ("NXDOMAIN",
    "none", or "" when it found some or failed)."""
    if refused:  # the answer's records were there, but none may be a replica
        return (f"DNS at {server} names only addresses that cannot be replicas"
                f" ({', '.join(refused[:3])}); see the warning logged for them")
    said = []
    for name, kinds in list(missing.items())[:3]:
        if kinds == ["NXDOMAIN"]:
            said.append(f"none of {name} exists (NXDOMAIN)" if ", " in name
                        else f"{name} does not exist (NXDOMAIN)")
        elif kinds == ["."]:
            said.append(f"the SRV records of {name} say the service is not available (target '.')")
        else:
            said.append(f"{name} has no {' or '.join(kinds)} record")
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    labels = host.split(".")
    if said and srv_none and not (len(labels) > 2 and labels[0][:1] == labels[1][:1] == "_"):
        # asked as written (Consul's kv.service.consul and CoreDNS's Service names answer SRV there);
        # most zones publish SRV records only under _SERVICE._PROTO., which is the likely slip. Only when
        # the name had none: SRV records there whose targets fail are that answer's to fix, and a name
        # that does not exist has no A/AAAA records either
        a_records = "" if srv_none == "NXDOMAIN" else f", or dns:///{host}:PORT for its A/AAAA records"
        more += (f" (SRV records usually live under _SERVICE._PROTO.: write dns+srv:///_SERVICE._tcp.{host}"
                 f"{a_records})")
    return f"DNS at {server}: {'; '.join(said)}{more}" if said else ""
