"""``plugbay info``, ``plugbay health`` and ``plugbay call``: asking a running plugin."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import click
import grpc

from plugbay.cli import output
from plugbay.cli.connectcause import connect_failure, silence, tls_failed_early, tls_refusal
from plugbay.cli.targets import Reached, Tls, reach
from plugbay.core.transport.handlenames import named_handles
from plugbay.errors import (CallFailedError, ConfigError, DiscoveryUnavailableError, EngineUnavailableError,
                            TargetUnreachableError)

TARGET_HELP = "TARGET_OR_REATTACH: @REATTACH_FILE, reattach JSON, or a target (static:///, dns:///, kubernetes:///, unix:///)."


def target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.argument("target", metavar="TARGET_OR_REATTACH"),
        click.option("--insecure", is_flag=True, help="Plaintext to a unix:// or static:// target."),
        click.option("--ca", type=click.Path(dir_okay=False), help="CA certificate (PEM) for mTLS."),
        click.option("--cert", type=click.Path(dir_okay=False), help="Client certificate (PEM) for mTLS."),
        click.option("--key", type=click.Path(dir_okay=False), help="Client key (PEM) for mTLS."),
        click.option("--server-name", help="The name the plugin's certificate carries (a subjectAltName), when it"
                                           " names another host than the address dialed (mTLS to a network"
                                           " target)."),
        click.option("--timeout", type=output.FloatRange(0.1, 600), default=5.0, show_default=True,
                     help="Seconds to wait for each answer."),
        click.option("--allow-loopback", is_flag=True,
                     help="Take loopback addresses from a dns:/// or kubernetes:/// target's answers"
                          " (refused by default)."),
    ]):
        func = option(func)
    return func


def _tls(kw: dict[str, Any]) -> Tls:
    return Tls(ca=kw.pop("ca"), cert=kw.pop("cert"), key=kw.pop("key"), insecure=kw.pop("insecure"),
               allow_loopback=kw.pop("allow_loopback"), server_name=kw.pop("server_name"))


# --- health --------------------------------------------------------------------------------

# gRPC ends a call at its deadline on the thread that reads the connection; a peer that keeps that thread
# busy (HTTP/2 CONTINUATION frames that never end a header block) kept a 5 s check for 70 s and a blocking
# call for minutes. A check or call is given up this long after its deadline, by this thread's own clock.
_OVERRUN = 1.0


def _overran(timeout: float) -> str:
    return (f"DEADLINE_EXCEEDED: no answer within {timeout:g}s, and gRPC did not end the call within"
            f" {timeout + _OVERRUN:g}s (the peer may be no gRPC server, keeping the connection busy without"
            " answering, or this host was too busy to run gRPC's threads)")


def answer_within(pending: grpc.Future, timeout: float) -> Any:
    """``pending``'s answer (or its RpcError), waited for ``timeout`` plus _OVERRUN at most; past that it is
    cancelled and grpc.FutureTimeoutError raised."""
    try:
        return pending.result(timeout=timeout + _OVERRUN)
    except grpc.FutureTimeoutError:
        pending.cancel()
        raise


def check_health(channel: grpc.Channel, service: str, timeout: float, *, wait: bool = True,
                 early: Callable[[grpc.Future], None] | None = None) -> dict[str, Any]:
    """One health check: status SERVING / NOT_SERVING / UNREACHABLE with its round trip in ms.

    ``wait``: up to ``timeout`` for a target that is not connected yet (coming up). Without it, a target
    that refuses the connection is UNREACHABLE at once; ``timeout`` still bounds a connected one's answer,
    and a connection attempt left unanswered (a full backlog, dropped packets: gRPC gives it 20 s).
    ``early``: called with the pending check, to raise a failure known before its answer (_refused_at_once).
    """
    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    started = time.monotonic()
    try:
        pending = stub.Check.future(health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                                    wait_for_ready=wait)
        if early is not None:
            early(pending)
        resp = answer_within(pending, timeout)
    except grpc.FutureTimeoutError:
        return {"status": "UNREACHABLE", "ms": round((time.monotonic() - started) * 1000, 2),
                "detail": _overran(timeout)}
    except grpc.RpcError as exc:
        ms = (time.monotonic() - started) * 1000
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return {"status": "UNREACHABLE", "ms": round(ms, 2),
                    "detail": f"{code.name}: {named_handles(str(exc.details()))}"
                              + _met(channel, code, _cause(channel, code))}
        return {"status": "NOT_SERVING", "ms": round(ms, 2), "detail": f"{code.name}: {exc.details()}"}
    ms = (time.monotonic() - started) * 1000
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return {"status": "SERVING" if status == "SERVING" else "NOT_SERVING", "ms": round(ms, 2),
            "detail": status}


def _cause(channel: grpc.Channel, code: grpc.StatusCode) -> str:
    """What connect_failure says after a deadline a wait for the connection ran out, else ""."""
    return connect_failure(channel) if code == grpc.StatusCode.DEADLINE_EXCEEDED else ""


def _met(channel: grpc.Channel, code: grpc.StatusCode, cause: str, calling: bool = False) -> str:
    """``cause``, or, for a deadline that met no failed connection, what silence() says it met."""
    return cause or (silence(channel, calling) if code == grpc.StatusCode.DEADLINE_EXCEEDED else "")


def _tls_refused(result: dict[str, Any], reached: Reached, tls: Tls) -> Exception | None:
    """The typed error of a check that failed on TLS (a --ca that did not sign the plugin's certificate), else None."""
    if result["status"] != "UNREACHABLE" or reached.facts.get("tls") is not True or "endpoints" not in reached.facts:
        return None  # a reattach config's AutoMTLS is the plugin's own: no flag of this command sets it
    return tls_refusal(result["detail"], reached.target, tls.insecure, reached.network_tls,
                       reached.facts.get("address", ""))


def _refused_at_once(reached: Reached, tls: Tls, timeout: float) -> Callable[[grpc.Future], None]:
    """What raises the typed error of a definite TLS failure of a network target's connection as soon as it
    shows, while a call (or a wait for the connection) is pending for a target coming up (none can pass with
    these files; nor can --insecure with a TLS server or one that is no HTTP/2), not at its --timeout.
    Nothing else is judged here."""
    def early(answer: grpc.Future) -> None:
        if "endpoints" not in reached.facts:
            return  # a reattach config's AutoMTLS is the plugin's own: no flag of this command sets it
        from plugbay.network.resolver import Endpoint

        endpoint = Endpoint(reached.facts["network"], reached.facts["address"])  # the one dialed (for a probe)
        refused = tls_failed_early(reached.channel, reached.target, tls.insecure, answer, timeout, endpoint,
                                   reached.network_tls)
        if refused is not None:
            raise refused
    return early


def _health_code(status: str) -> int:
    return {"SERVING": output.OK, "UNREACHABLE": output.UNREACHABLE}.get(status, output.UNHEALTHY)


@click.command(epilog="""\b
Example:
  plugbay health @plugin.json
  plugbay health static:///127.0.0.1:4000 --insecure --watch --interval 2
Exit code 0 only when SERVING; 3 when unreachable, 4 when not serving.""")
@target_options
@click.option("--service", default="plugin", show_default=True, help="Health service name to check.")
@click.option("--watch", is_flag=True, help="Check again every --interval seconds until Ctrl-C (its checks do not"
              " wait for a target to come up: the next check does).")
@click.option("--interval", type=output.FloatRange(0.05, 3600), default=1.0, show_default=True)
@click.option("--count", type=click.IntRange(1), default=None, help="With --watch: stop after N checks.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check.")
def health(service: str, watch: bool, interval: float, count: int | None, as_json: bool,
           **kw: Any) -> int:
    """Is the plugin SERVING? Prints the status and the check's round trip.

    TARGET_OR_REATTACH: @REATTACH_FILE, reattach JSON, or a target (static:///, dns:///, kubernetes:///, unix:///).
    """
    tls, target, timeout = _tls(kw), kw["target"], kw["timeout"]
    # A watch's checks do not wait for a connection: each waited --timeout on a dead target, and a line came
    # every --timeout + --interval. The next check is the wait, so gRPC's reconnect backoff (up to 120 s)
    # is capped at two intervals, as the endpoint pool's health checks have it: a target back is seen.
    redial: list[tuple[str, int]] = []
    if watch:
        from plugbay.network.poolhealth import reconnect_backoff

        redial = reconnect_backoff(interval)
    with ExitStack() as stack:
        reached: Reached | None = None
        done, code = 0, output.UNREACHABLE
        try:
            while True:
                try:  # reached once, the channel is kept: it reconnects by itself
                    reached = reached or stack.enter_context(reach(target, tls, options=redial))
                # not there (yet), or its discovery source (a DNS server, a cluster's API) does not answer: a
                # watch goes on, to see it come up, and a check says UNREACHABLE as for a name with no record
                except (TargetUnreachableError, DiscoveryUnavailableError) as exc:
                    if isinstance(exc.__cause__, EngineUnavailableError):
                        raise  # no usable kubeconfig: a configuration to fix, not a source to wait for
                    result: dict[str, Any] = {"status": "UNREACHABLE", "ms": 0.0,
                                              "detail": output.one_line(str(exc))}
                else:
                    result = check_health(reached.channel, service, timeout, wait=not watch,
                                          early=None if watch else _refused_at_once(reached, tls, timeout))
                    refused = _tls_refused(result, reached, tls)
                    if refused is not None and not watch:  # no check can pass with these files: say which to fix
                        raise refused
                    if refused is not None:
                        result["detail"] = output.one_line(str(refused))
                code, done = _health_code(result["status"]), done + 1  # before it shows: Ctrl-C may come then
                _print_health(result, as_json)
                if not watch or (count is not None and done >= count):
                    return code
                time.sleep(interval)
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a watch ends: the last check's code
            if watch and done:
                return code
            raise


def _print_health(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json({**result, "time": round(time.time(), 3)})
        return
    style = {"SERVING": "bold green", "UNREACHABLE": "bold red"}.get(result["status"], "bold yellow")
    output.say(f"{result['status']} {result['ms']:.1f}ms ({result['detail']})", style=style)


# --- info ----------------------------------------------------------------------------------


@click.command(epilog="""\b
Example:
  plugbay info @plugin.json
  plugbay info @plugin.json --proto protos/examples/kv.proto --json""")
@target_options
@click.option("--proto", "protos", multiple=True, type=click.Path(dir_okay=False),
              help="A .proto describing the plugin's services (when it offers no reflection). Repeatable.")
@click.option("--proto-path", "proto_paths", multiple=True, type=click.Path(file_okay=False),
              help="Import folder for --proto. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (keys: target, facts, health, "
              "services_source, services).")
def info(protos: tuple[str, ...], proto_paths: tuple[str, ...], as_json: bool, **kw: Any) -> int:
    """What a running plugin serves: its gRPC services and methods, health, protocol versions.

    Services come from server reflection when the plugin offers it, else from --proto.
    TARGET_OR_REATTACH: @REATTACH_FILE, reattach JSON, or a target (static:///, dns:///, kubernetes:///, unix:///).
    """
    from plugbay.cli import descriptors

    tls, timeout = _tls(kw), kw["timeout"]
    with reach(kw["target"], tls) as reached:
        health_result = check_health(reached.channel, "plugin", timeout,
                                     early=_refused_at_once(reached, tls, timeout))
        refused = _tls_refused(health_result, reached, tls)
        if refused is not None:
            raise refused
        if health_result["status"] == "UNREACHABLE":
            raise TargetUnreachableError(f"the plugin does not answer ({health_result['detail']}); check"
                                         " that it still runs and the target is right")
        services = descriptors.from_protos(protos, proto_paths) if protos else \
            descriptors.from_reflection(reached.channel, timeout)
        described = descriptors.describe(services) if services else []
        source = services.source if services else "none"
    if as_json:
        output.emit_json({"target": reached.target, "facts": reached.facts, "health": health_result,
                          "services_source": source, "services": described})
        return output.OK
    output.facts([("target", reached.target), *reached.facts.items(),
                  ("health", f"{health_result['status']} ({health_result['ms']:.1f}ms)")])
    if services is None:
        output.say("services: unknown (the plugin offers no server reflection; pass --proto FILE)")
        return output.OK
    output.say(f"services ({source}):")
    for svc in described:
        output.say(f"  {svc['service']}", style="bold")
        if "error" in svc:
            output.say(f"    ({svc['error']})")
        for m in svc["methods"]:
            kind = ("stream " if m["client_streaming"] else "") + m["input"] + " -> " + \
                ("stream " if m["server_streaming"] else "") + m["output"]
            output.say(f"    {m['path']}  {kind}")
    return output.OK


# --- call ----------------------------------------------------------------------------------


@click.command(epilog="""\b
Example:
  plugbay call @plugin.json /proto.KV/Put '{"key": "a", "value": "aGk="}' --proto protos/examples/kv.proto
  plugbay call @plugin.json /proto.KV/Get '{"key": "a"}' --proto protos/examples/kv.proto
bytes fields are base64 in JSON (protobuf's JSON mapping).""")
@target_options
@click.argument("method")
@click.argument("request", default="{}")
@click.option("--proto", "protos", multiple=True, type=click.Path(dir_okay=False),
              help="A .proto defining the method (else server reflection). Repeatable.")
@click.option("--proto-path", "proto_paths", multiple=True, type=click.Path(file_okay=False),
              help="Import folder for --proto. Repeatable.")
def call(method: str, request: str, protos: tuple[str, ...], proto_paths: tuple[str, ...], **kw: Any) -> int:
    """One unary call: REQUEST is JSON, the answer is printed as JSON.

    METHOD is /package.Service/Method. TARGET_OR_REATTACH: @REATTACH_FILE, reattach JSON,
    or a target (static:///, dns:///, kubernetes:///, unix:///).
    """
    from google.protobuf import json_format, message_factory

    from plugbay.cli import descriptors

    tls, timeout = _tls(kw), kw["timeout"]
    services = descriptors.from_protos(protos, proto_paths) if protos else None
    with reach(kw["target"], tls) as reached:
        if services is None:
            try:
                services = descriptors.from_reflection(reached.channel, timeout,
                                                       early=_refused_at_once(reached, tls, timeout))
            except TargetUnreachableError as exc:
                raise (_tls_refused({"status": "UNREACHABLE", "detail": str(exc)}, reached, tls) or exc) from None
            if services is None:
                raise ConfigError("the plugin offers no server reflection; pass --proto FILE with the"
                                  " service's definition")
        desc = descriptors.find_method(services, method)
        _json_object(request, desc.input_type.full_name)
        req_cls = message_factory.GetMessageClass(desc.input_type)
        resp_cls = message_factory.GetMessageClass(desc.output_type)
        try:
            req = json_format.Parse(request, req_cls())
        except json_format.ParseError as exc:
            raise ConfigError(f"request is not valid JSON for {desc.input_type.full_name}: {exc};"
                              f" write it as protobuf JSON, e.g. '{{\"field\": \"value\"}}'") from None
        stub = reached.channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=resp_cls.FromString)
        try:
            pending = stub.future(req, timeout=timeout, wait_for_ready=True)
            _refused_at_once(reached, tls, timeout)(pending)
            resp = answer_within(pending, timeout)
        except grpc.FutureTimeoutError:
            raise TargetUnreachableError(f"{method} failed: {_overran(timeout)}; check the target") from None
        except grpc.RpcError as exc:
            cause = _cause(reached.channel, exc.code())
            # a TLS failure only when the connection failed (cause: the channel's own last attempt); a status
            # the plugin sent is its answer, whatever its words (a key named "certificate verify failed")
            detail = f"{named_handles(str(exc.details()))}{cause}"
            refused = _tls_refused({"status": "UNREACHABLE", "detail": detail}, reached, tls) if cause else None
            raise (refused or _call_error(exc, method, _met(reached.channel, exc.code(), cause, True))) from None
    output.say(json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None))
    return output.OK


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


_TOO_DEEP = ("request is nested too deeply to be read (Python's JSON reader stops near 1,000 levels);"
             " write it as protobuf JSON with fewer levels")


def _json_object(request: str, type_name: str) -> None:
    """A request message is a JSON object: protobuf's parser would take an array as an empty message.
    Not so the well-known types, whose JSON is a string, number or array (StringValue, ListValue...)."""
    if type_name.startswith("google.protobuf."):
        return  # json_format checks their JSON shape itself
    try:
        value = json.loads(request)
    except ValueError:
        return  # not JSON at all: json_format says where, naming the message type
    except RecursionError:  # Python's JSON reader recurses once per level
        raise ConfigError(_TOO_DEEP) from None
    if not isinstance(value, dict):
        raise ConfigError(f"request must be a JSON object, not {_JSON_KINDS.get(type(value), 'that')}:"
                          f" write it as protobuf JSON, e.g. '{{\"field\": \"value\"}}' ('{{}}' for no fields)")


def _call_error(exc: grpc.RpcError, method: str, connection: str = "") -> Exception:
    code, details = exc.code(), exc.details()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # what the deadline met, where it was told (a connection up: the plugin runs), says what to check
        return TargetUnreachableError(f"{method} failed: {code.name}: {named_handles(str(details))}{connection}"
                                      + ("" if "the connection is up" in connection else
                                         "; check that the plugin runs"))
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return CallFailedError(f"{method} failed: the plugin does not implement it ({details}); check the"
                               " method name against plugbay info")
    return CallFailedError(f"{method} failed: {code.name}: {details}")
