"""Usage the plugbay command refuses (exit 2, one line naming what to do) instead of doing something
else than asked, and `run --json` keeping stdout to its one JSON document: real plugins, real commands."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.cli_util import KV_PLUGIN, KV_PROTO, cli_env, plugbay, running

KV_CMD = f"{sys.executable} {KV_PLUGIN}"
COOKIE = "BASIC_PLUGIN=hello"


def refused(out: Any, *named: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for part in named:
        assert part in out.stderr, out.stderr


def test_call_request_must_be_a_json_object(tmp_path: Path) -> None:
    # protobuf's JSON parser takes an array as an empty message: the KV plugin would store kv_ here
    with running(["--cmd", KV_CMD, "--cookie", COOKIE], tmp_path) as run:
        for request, kind in (("[]", "an array"), ('"x"', "a string"), ("3", "a number"), ("null", "null")):
            out = plugbay("call", run.target, "/proto.KV/Put", request, "--proto", str(KV_PROTO))
            refused(out, "request must be a JSON object", f"not {kind}")
        assert not (tmp_path / "kv_").exists()
        put = plugbay("call", run.target, "/proto.KV/Put", '{"key": "k", "value": "aGk="}', "--proto", str(KV_PROTO))
        assert put.returncode == 0, put.stderr
    assert (tmp_path / "kv_k").read_bytes() == b"hi"


_WRAPPERS_PROTO = """syntax = "proto3";
package rv;
import "google/protobuf/wrappers.proto";
import "google/protobuf/struct.proto";
service Echo {
  rpc Say(google.protobuf.StringValue) returns (google.protobuf.StringValue);
  rpc Tags(google.protobuf.ListValue) returns (google.protobuf.ListValue);
}
"""


def test_call_takes_the_json_of_well_known_types_that_is_not_an_object(tmp_path: Path) -> None:
    # protobuf JSON writes a StringValue as a string and a ListValue as an array
    from concurrent import futures

    import grpc
    from google.protobuf import struct_pb2, wrappers_pb2

    def handler(kind: Any, answer: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(answer, request_deserializer=kind.FromString,
                                                   response_serializer=lambda m: m.SerializeToString())

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rv.Echo", {
        "Say": handler(wrappers_pb2.StringValue, lambda r, c: wrappers_pb2.StringValue(value="echo:" + r.value)),
        "Tags": handler(struct_pb2.ListValue, lambda r, c: r)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proto = tmp_path / "rv_echo.proto"
    proto.write_text(_WRAPPERS_PROTO)
    try:
        target = f"static:///127.0.0.1:{port}"
        said = plugbay("call", target, "/rv.Echo/Say", '"hello"', "--proto", str(proto), "--insecure")
        assert (said.returncode, said.stdout.strip()) == (0, '"echo:hello"'), said.stderr
        tags = plugbay("call", target, "/rv.Echo/Tags", '["a", 1]', "--proto", str(proto), "--insecure")
        assert (tags.returncode, json.loads(tags.stdout)) == (0, ["a", 1]), tags.stderr
    finally:
        server.stop(None).wait()


def test_run_json_prints_one_document_and_status_on_stderr(tmp_path: Path) -> None:
    with running(["--cmd", KV_CMD, "--cookie", COOKIE, "--json"], tmp_path) as run:
        code = run.interrupt()
        stdout, stderr = run.stdout, run.stderr  # taken before running() collects the ended run again
    assert code == 0, stderr
    facts = json.loads(stdout)  # the whole of stdout
    assert facts["runner"] == "process" and facts["reattach_file"] == str(run.reattach)
    assert "stopping the plugin (Ctrl-C again to kill it at once)" in stderr
    assert "plugin stopped; nothing left behind" in stderr


def test_a_multiplexed_plugins_reattach_config_is_refused(tmp_path: Path) -> None:
    with running(["--cmd", KV_CMD, "--cookie", COOKIE, "--multiplex"], tmp_path) as run:
        assert run.config()["handshake"]["multiplex"] is True
        for args in (["health"], ["info"], ["call", "/proto.KV/Get", '{"key": "a"}', "--proto", str(KV_PROTO)]):
            # --timeout 1: without the check the dial waits it out and says the plugin does not answer (exit 3)
            out = plugbay(args[0], run.target, *args[1:], "--timeout", "1")
            refused(out, "multiplexed broker", "without --multiplex")
        assert run.proc.poll() is None  # the plugin runs on


def test_gateway_start_timeout_is_checked_before_it_listens() -> None:
    for bad in ("-1", "nan", "0", "inf"):
        out = plugbay("gateway", "--cookie", COOKIE, "--insecure", "--listen", "127.0.0.1:0", "--start-timeout", bad,
                      "--", sys.executable, str(KV_PLUGIN))
        assert out.returncode == 2, (bad, out.stderr)
        assert "--start-timeout must be a positive number of seconds" in out.stderr, out.stderr
        assert "listening" not in out.stdout


@pytest.mark.parametrize("flag, named", [("--cmd", "--cmd is empty; give the plugin's command line"),
                                         ("--image", "--image is empty; give the plugin's image"),
                                         ("--pod", "--pod is empty; give the plugin's image")])
def test_run_says_an_empty_runner_flag_is_empty(tmp_path: Path, flag: str, named: str) -> None:
    # `--cmd ''` was told "give exactly one of --cmd, --image or --pod", though it gave one
    refused(plugbay("run", flag, "", "--cookie", COOKIE, cwd=tmp_path), named)


def test_gateway_says_a_listen_port_is_out_of_range() -> None:
    # port 99999 was "not HOST:PORT", which it is
    out = plugbay("gateway", "--cookie", COOKIE, "--insecure", "--listen", "127.0.0.1:99999", "--",
                  sys.executable, str(KV_PLUGIN))
    assert out.returncode == 2, out.stderr
    assert "'127.0.0.1:99999': port 99999 is out of range 0-65535 (0: any free port)" in out.stderr, out.stderr
    assert "listening" not in out.stdout


def test_a_start_timeout_names_the_flag_and_a_signal_its_name(tmp_path: Path) -> None:
    # the timeout said "Raise start_timeout", the Python keyword, to a user of --start-timeout
    slow = plugbay("run", "--cmd", "sleep 60", "--cookie", COOKIE, "--start-timeout", "1", cwd=tmp_path)
    assert slow.returncode == 1, slow.stderr
    assert "Raise start_timeout (--start-timeout on plugbay's command line) if it is slow" in slow.stderr
    # a plugin ended by SIGSEGV before its handshake line: the -11 named as a SIGKILL's -9 is elsewhere
    crash = f"{sys.executable} -c 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)'"
    out = plugbay("run", "--cmd", crash, "--cookie", COOKIE, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "exited with code -11 before completing the handshake" in out.stderr
    assert "It was killed by SIGSEGV." in out.stderr, out.stderr


def test_plugbay_options_before_gateway_count() -> None:
    # the gateway takes its arguments verbatim, but `plugbay --debug gateway` still asks for debug logs
    # and `plugbay --bogus gateway` is refused as click refuses it before any other command
    gateway = ["gateway", "--cookie", COOKIE, "--insecure", "--listen", "127.0.0.1:0", "--start-timeout", "5",
               "--", "/bin/false"]
    for options, debug in (([], False), (["--debug"], True), (["-v"], False)):
        out = plugbay(*options, *gateway)
        assert out.returncode == 1 and "exited with code 1 before completing the handshake" in out.stderr, out.stderr
        assert (" DEBUG " in out.stderr) is debug, (options, out.stderr)
    bogus = plugbay("--bogus", *gateway)
    assert bogus.returncode == 2 and "No such option '--bogus'" in bogus.stderr, bogus.stderr


@pytest.mark.parametrize("args, named", [
    (["--cmd", "true", "--transport", "tcp"], "--transport tcp needs --image IMAGE"),
    (["--cmd", "true", "--transport", "unix"], "--transport unix needs --image IMAGE"),
    (["--cmd", "true", "--writable", "/data"], "--writable needs --image IMAGE or --pod IMAGE"),
    (["--cmd", "true", "--namespace", "plugins"], "--namespace needs --pod IMAGE"),
    (["--cmd", "true", "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig needs --pod IMAGE"),
    (["--image", "plugbay-kv:latest", "--namespace", "plugins"], "--namespace needs --pod IMAGE"),
    (["--pod", "plugbay-kv:latest", "--transport", "tcp"], "--transport tcp needs --image IMAGE"),
])
def test_run_refuses_options_of_another_runner(tmp_path: Path, args: list[str], named: str) -> None:
    # DOCKER_HOST and KUBECONFIG lead nowhere and `true` exits at once: the refusal comes before any of
    # them is asked, and without it the run fails some other way rather than hang
    env = cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock", KUBECONFIG="/nonexistent/kubeconfig")
    out = plugbay("run", *args, "--cookie", COOKIE, env=env, cwd=tmp_path)
    refused(out, named)
    assert list(tmp_path.iterdir()) == []


def test_run_pod_gets_the_writable_folders(tmp_path: Path) -> None:
    from tests.kube_standin import StandIn

    server = StandIn(runtime="process").start()
    pods: list[dict[str, Any]] = []
    lock = threading.Lock()

    def created(kind: str, pod: dict[str, Any]) -> None:
        if kind == "ADDED":
            with lock:
                pods.append(pod)

    server.store.listeners.append(created)
    try:
        kubeconfig = server.write_kubeconfig(str(tmp_path / "kubeconfig"))
        # the process stand-in cannot run an image without a command: the start fails, the pod was made
        out = plugbay("run", "--pod", "no-engine/kv:1", "--writable", "/data", "--kubeconfig", kubeconfig,
                      "--namespace", "default", "--start-timeout", "5", "--cookie", COOKIE, cwd=tmp_path)
        assert out.returncode != 0
        with lock:
            (pod,) = pods
        spec = pod["spec"]
        empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        mounts = [m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] in empty]
        assert mounts == ["/tmp", "/data"]
        relative = plugbay("run", "--pod", "no-engine/kv:1", "--writable", "data", "--kubeconfig", kubeconfig,
                           "--cookie", COOKIE, cwd=tmp_path)
        refused(relative, "--writable 'data' must be an absolute path")
        with lock:
            assert len(pods) == 1
    finally:
        server.stop()


def test_health_names_a_missing_host() -> None:
    for target in ("static:///:7000", "dns:///:80"):
        out = plugbay("health", target, "--insecure")
        refused(out, f"{target[target.index(':///') + 4:]!r} lacks the HOST before :PORT")


def test_a_request_nested_too_deeply_and_a_pid_in_other_digits_are_refused(tmp_path: Path) -> None:
    # nothing is dialled: the request is read first (and port 1 on loopback has no plugin anyway)
    deep = plugbay("call", "static:///127.0.0.1:1", "/proto.KV/Get", "[" * 60000, "--insecure",
                   "--proto", str(KV_PROTO))
    refused(deep, "nested too deeply")
    proto = tmp_path / "rv_echo.proto"
    proto.write_text(_WRAPPERS_PROTO)  # a well-known type's JSON goes to protobuf's reader, which says so
    deep = plugbay("call", "static:///127.0.0.1:1", "/rv.Echo/Tags", "[" * 60000, "--insecure", "--proto", str(proto))
    refused(deep, "not valid JSON for google.protobuf.ListValue", "recursion")
    for ident in ("\u00b2", "\u0661\u0662\u0663"):  # digits to str.isdigit(), not to int() / not ASCII
        refused(plugbay("diagnose", f"pid:{ident}"), "names no plugin")


@pytest.mark.parametrize("args, named, sweeps", [
    (["--namespace", "plugins"], "--namespace needs --kubernetes", "this one sweeps Docker and the temp folders\n"),
    # the words are of what was asked: they said "Docker and the temp folders are" swept where one was
    (["--docker", "--namespace", "plugins"], "--namespace needs --kubernetes", "this one sweeps Docker\n"),
    (["--temp", "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig needs --kubernetes",
     "this one sweeps the temp folders\n"),
    (["--kubernetes", "--temp-dir", "."], "--temp-dir needs --temp", "this one sweeps pods\n"),
    # --grace is Docker's: without a Docker sweep it was ignored
    (["--temp", "--grace", "5"], "--grace needs --docker", "this one sweeps the temp folders\n"),
    (["--kubernetes", "--grace", "0"], "--grace needs --docker", "this one sweeps pods\n"),
    # --session is the Docker sweep's only: without --docker the temp folders of every gone host were swept too
    (["--session", "abc"], "--session needs --docker", "the temp folders of every gone host"),
    (["--temp", "--session", "abc"], "--session needs --docker", "the temp folders of every gone host"),
    # an empty one was refused in the Python API's words, sweep(sessions=)
    (["--docker", "--session", ""], "--session takes a host session id", "got ''"),
    # an empty namespace was swept as "default"; refused as run's runner refuses it
    (["--kubernetes", "--namespace", ""], "--namespace must be a Kubernetes namespace name", "got ''"),
])
def test_sweep_refuses_options_of_a_sweep_not_asked_for(tmp_path: Path, args: list[str], named: str,
                                                        sweeps: str) -> None:
    # `sweep --namespace plugins` (the --kubernetes forgotten) swept Docker and the temp folders, not a pod,
    # and said "removed N"; a dry run here, against no engine, so the old code removes nothing either
    env = cli_env(DOCKER_HOST="unix:///nonexistent/docker.sock", KUBECONFIG="/nonexistent/kubeconfig")
    out = plugbay("sweep", *args, "--dry-run", env=env, cwd=tmp_path)
    refused(out, named, sweeps)
