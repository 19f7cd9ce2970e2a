"""``plugbay diagnose`` (why did a plugin fail?) and ``plugbay sweep`` (remove what dead hosts left)."""

from __future__ import annotations

from typing import Any

import click

from plugbay.cli import output
from plugbay.cli.targets import load_reattach
from plugbay.core.protocol.exits import signal_name
from plugbay.errors import ConfigError, EngineUnavailableError, RunnerError, printable

_LOG_LINES = 20
# plugbay.runners.kubernetes.api.DEFAULT_API_TIMEOUT (not imported here: that package loads the whole runner)
API_TIMEOUT = 30.0
SWEEP_GRACE = 60.0  # sweep --grace unless given


def _signal_name(code: int | None) -> str | None:
    """The signal an exit code stands for: 128+N (containers, shells) or -N (a child process)."""
    if code is None:
        return None
    return signal_name(code - 128 if code > 128 else -code if code < 0 else 0)


def _docker(container_id: str) -> dict[str, Any]:
    from plugbay.images import docker_client
    from plugbay.runners.docker.adopt import is_container_ref
    from plugbay.runners.docker.engine import engine_call, require_sdk

    # the id goes into the engine's request path: 'x/../../images/NAME' would inspect an image
    if not is_container_ref(container_id):
        raise ConfigError(f"docker:{container_id[:80]!r} names no container: give its id (12-64 hex digits) or"
                          " name ([a-zA-Z0-9][a-zA-Z0-9_.-]*), as `docker ps -a` shows them")
    require_sdk()
    from docker.errors import APIError, DockerException, NotFound

    client = docker_client()
    try:
        try:
            container = engine_call(lambda: client.containers.get(container_id), "find the container")
        except NotFound:
            raise RunnerError(f"no container {container_id[:12]} on the Docker engine (removed, or another"
                              " engine); nothing left to diagnose") from None
        state = container.attrs.get("State") or {}
        lines: list[str] = []
        logs_error = None
        try:
            logs = engine_call(lambda: container.logs(stdout=True, stderr=True, tail=_LOG_LINES),
                               "read the container's log")
            lines = logs.decode("utf-8", "replace").splitlines()[-_LOG_LINES:]
        except APIError as exc:  # a log driver the engine cannot read back ("none", syslog...: 501)
            driver = ((container.attrs.get("HostConfig") or {}).get("LogConfig") or {}).get("Type") or "?"
            logs_error = f"the engine cannot read its logs back (log driver {driver!r}: {exc.explanation or exc})"
        code = state.get("ExitCode") if state.get("Status") in ("exited", "dead") else None
        return {"runner": "DockerRunner", "id": container.id, "name": container.name,
                "image": (container.attrs.get("Config") or {}).get("Image"), "state": state.get("Status"),
                "exit_code": code, "oom_killed": bool(state.get("OOMKilled")), "signal": _signal_name(code),
                "restart_count": int(container.attrs.get("RestartCount") or 0), "error": state.get("Error") or None,
                "logs_error": logs_error, "events": [], "conditions": [], "last_log_lines": lines}
    except DockerException as exc:
        raise RunnerError(f"the Docker engine failed to describe container {container_id[:12]}: {exc}") from exc
    finally:
        client.close()


def _pod(namespace: str, name: str, kubeconfig: str | None, api_timeout: float = API_TIMEOUT,
         flag: str | None = "--kubeconfig") -> dict[str, Any]:
    from plugbay.runners.kubernetes.api import (call, check_api_timeout, close_client, load_api_client, not_found,
                                                request_timeout, require_client)

    require_client()
    from kubernetes import client

    from plugbay.runners.kubernetes import pods

    # each call bounded (connect, answer, whole body): an API server or proxy that takes the request and
    # never answers would hold the command for good
    timeout = request_timeout(check_api_timeout(api_timeout))
    with output.kubernetes_flags(flag):
        api_client, _ = load_api_client(kubeconfig)
    try:
        api: Any = client.CoreV1Api(api_client)

        def ask(verb: str, resource: str, func: Any, *args: Any, **kwargs: Any) -> Any:
            return call(api_client, namespace, verb, resource, func, *args, _request_timeout=timeout, **kwargs)

        try:
            pod = api_client.sanitize_for_serialization(ask("get", "pods", api.read_namespaced_pod, name, namespace))
        except RunnerError as exc:
            if not_found(exc.__cause__, "pods", name):  # the API server's own word, not a proxy's 404 page
                raise RunnerError(f"no pod {namespace}/{name} (deleted, or another cluster/namespace);"
                                  " nothing left to diagnose") from None
            raise
        # the pod is read: its events and log add to what is known, and failing to get them (RBAC without
        # events or pods/log, a container that never started, an API that stopped answering) is said in place
        try:
            evs = ask("list", "events", api.list_namespaced_event, namespace,
                      field_selector=f"involvedObject.name={name}").items
            events = [pods.format_event(api_client.sanitize_for_serialization(e)) for e in evs]
        except RunnerError as exc:
            events = [printable(f"(events unavailable: {exc})")]
        logs_error = None
        try:
            logs = str(ask("get", "pods/log", api.read_namespaced_pod_log, name, namespace,
                           container=pods.CONTAINER_NAME, tail_lines=_LOG_LINES)).splitlines()
        except RunnerError as exc:
            logs, logs_error = [], str(exc)
        cs = pods.plugin_status(pod)
        term = ((cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {})
        code = pods.exit_code(pod)
        return {"runner": "KubernetesRunner", "id": f"{namespace}/{name}", "name": name,
                "image": cs.get("image"), "state": pods.phase(pod), "exit_code": code,
                "oom_killed": term.get("reason") == "OOMKilled",
                "signal": (_signal_name(term.get("exitCode"))
                           or (f"SIG{term['signal']}" if term.get("signal") else None)),
                "restart_count": int(cs.get("restartCount") or 0), "error": term.get("message"),
                "logs_error": logs_error, "events": events, "conditions": [
                    {k: c.get(k) for k in ("type", "status", "reason", "message")}
                    for c in (pod.get("status") or {}).get("conditions") or []],
                "last_log_lines": logs, "text": pods.describe(pod, False, events, logs)}
    finally:
        close_client(api_client)


def _process(pid: int, start: int | None = None) -> dict[str, Any]:
    from plugbay.runners.session import proc_stat

    fields = proc_stat(pid)  # one read: a process that ends in between is simply gone
    alive = fields is not None and fields[0] not in ("Z", "X")
    error = None if alive else ("the process is gone; its exit code is known only to the host that started"
                                " it (its log shows it)")
    # a reattach config's start time tells the plugin from a later process given its pid
    if alive and fields is not None and start is not None and (len(fields) < 20 or fields[19] != str(start)):
        alive, error = False, (f"the plugin is gone: pid {pid} now belongs to a process started later;"
                               " the plugin's exit code is known only to the host that started it")
    return {"runner": "ProcessRunner", "id": str(pid), "name": str(pid), "image": None,
            "state": "running" if alive else "gone", "exit_code": None, "oom_killed": False, "signal": None,
            "restart_count": 0, "error": error, "events": [], "conditions": [], "last_log_lines": []}


def _facts_of(arg: str, kubeconfig: str | None, api_timeout: float = API_TIMEOUT) -> dict[str, Any]:
    config = load_reattach(arg)
    if config is not None:
        data = dict(config.runner)
        kind = data.get("kind")
        # the JSON is untrusted: its names are checked as the runners' own reattach checks them before any
        # engine or cluster sees them (a container id goes into the engine's request path)
        if kind == "DockerRunner":
            from plugbay.runners.docker.adopt import reattach_id

            return _docker(reattach_id(data))
        if kind == "KubernetesRunner":
            from plugbay.runners.kubernetes.api import reattach_kubeconfig
            from plugbay.runners.kubernetes.names import reattach_pod

            namespace, pod = reattach_pod(data)
            if kubeconfig is not None:
                return _pod(namespace, pod, kubeconfig, api_timeout)
            # never load the kubeconfig the JSON names: its exec: plugin would run (--kubeconfig is the user's)
            with output.kubernetes_flags("--kubeconfig"):
                chosen = reattach_kubeconfig(data.get("kubeconfig"), None)[0]
            # this host's own kubeconfig, not one the user typed: said as KUBECONFIG's (or the default)
            return _pod(namespace, pod, chosen, api_timeout, flag=None)
        if kind == "ProcessRunner":
            from plugbay.runners.attached import checked_pid

            return _process(*checked_pid(data))
        raise ConfigError(f"reattach config of unknown runner kind {kind!r}; plugbay diagnose knows"
                          " DockerRunner, KubernetesRunner and ProcessRunner")
    kind, sep, ident = arg.partition(":")
    if sep and kind == "docker" and ident:
        return _docker(ident)
    if sep and kind == "pod" and "/" in ident:
        namespace, name = ident.split("/", 1)
        return _pod(namespace, name, kubeconfig, api_timeout)
    if sep and kind == "pid" and ident.isascii() and ident.isdigit():  # int() takes other scripts' digits
        return _process(int(ident))
    raise ConfigError(f"{arg!r} names no plugin: pass @REATTACH_FILE, reattach JSON, docker:CONTAINER,"
                      " pod:NAMESPACE/NAME or pid:PID")


@click.command(epilog="""\b
Examples:
  plugbay diagnose @plugin.json
  plugbay diagnose docker:3f2a1c9e
  plugbay diagnose pod:plugins/plugbay-kv-1a2b --json""")
@click.argument("what", metavar="REATTACH_OR_ID")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="For pods: the kubeconfig file.")
@click.option("--api-timeout", type=float, default=API_TIMEOUT, show_default=True, metavar="SECONDS",
              help="For pods: how long each Kubernetes API call may take (to connect, and for its answer).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (keys: runner, id, name, image, "
              "state, exit_code, oom_killed, signal, restart_count, error, events, conditions, last_log_lines;"
              " containers and pods: logs_error).")
def diagnose(what: str, kubeconfig: str | None, api_timeout: float, as_json: bool) -> int:
    """What went wrong with a plugin: exit code, OOMKilled, signal, restarts, events, last log lines.

    REATTACH_OR_ID: @REATTACH_FILE, reattach JSON, docker:CONTAINER, pod:NAMESPACE/NAME or pid:PID.
    """
    facts = _facts_of(what, kubeconfig, api_timeout)
    text = facts.pop("text", None)
    if as_json:
        output.emit_json(facts)
        return output.OK
    pairs = [(k.replace("_", " "), v) for k, v in facts.items()
             if k not in ("events", "conditions", "last_log_lines") and v not in (None, [])]
    output.facts(pairs)
    if text is not None:  # the Kubernetes runner's own description (conditions, states, events)
        for line in text.splitlines():  # each line's controls escaped (events and logs are the cluster's words)
            output.say(line)
        return output.OK
    for key in ("events", "last_log_lines"):
        if facts[key]:
            output.say(key.replace("_", " ") + ":")
            for line in facts[key]:
                output.say("  " + line)
    return output.OK


@click.command(epilog="""\b
Examples:
  plugbay sweep --dry-run
  plugbay sweep --docker --grace 300
  plugbay sweep --temp --temp-dir /run/plugins
  plugbay sweep --kubernetes --namespace plugins --kubeconfig ~/.kube/config""")
@click.option("--docker", "docker_", is_flag=True, help="Sweep Docker containers.")
@click.option("--kubernetes", is_flag=True, help="Sweep Kubernetes pods.")
@click.option("--temp", is_flag=True, help="Sweep plugbay's temp folders (and the sockets in them).")
@click.option("--namespace", help="With --kubernetes (default: default).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="With --kubernetes.")
# exists=True: a misspelt folder was looked in as an empty one, and the sweep said "removed 0"
@click.option("--temp-dir", "temp_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="With --temp: a folder to look in, which must exist (repeatable; default: the temp dir and"
              " /var/tmp).")
@click.option("--grace", type=click.FloatRange(min=0), metavar="SECONDS",
              help="With Docker: leave the images and networks plugbay made less than SECONDS ago (a start or"
              " build may be about to use them; the engine's clock says), and those whose age the engine does"
              " not tell, and the records of containers removed without plugbay written less than SECONDS ago;"
              f" 0: no grace (default: {SWEEP_GRACE:g}).")
@click.option("--session", "sessions", multiple=True, metavar="ID",
              help="With --docker: only the containers this host session started or claimed (its plugbay.session"
              " label, or a reattaching host's); the images and networks are then left (repeatable).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: {docker: [...], docker_images: [...], "
              "docker_networks: [...], kubernetes: [...], temp: [...], left: {id: why}, count, dry_run}.")
def sweep(docker_: bool, kubernetes: bool, temp: bool, namespace: str | None, kubeconfig: str | None,
          temp_dirs: tuple[str, ...], grace: float | None, sessions: tuple[str, ...], dry_run: bool,
          as_json: bool) -> int:
    """Remove (or list) what plugbay hosts that are gone left behind on this machine.

    Without --docker, --kubernetes or --temp: Docker containers (and the images plugbay built
    that nothing names or uses any more, and the networks plugbay made that no container is on,
    once older than --grace: the lines "left ID: why" name those it left for their age, the
    containers of gone hosts it left because no record of this user proves plugbay made them, and
    the records it kept of gone hosts' containers another engine made, which only a sweep of that
    engine judges) and temp folders.
    A temp folder goes only once the process that made it is gone and no
    socket in it answers (a plugin left running for a reattach keeps its folder).
    """
    from plugbay.runners.docker.grace import checked_grace

    # all checked before anything is removed
    seconds = checked_grace(SWEEP_GRACE if grace is None else grace)  # FloatRange lets nan through
    if sessions and not docker_:
        # the temp folders are no session's: `sweep --session ID` swept every gone host's along with ID's containers
        raise ConfigError("--session needs --docker: only the Docker sweep is by host session, and without --docker"
                          " the temp folders of every gone host are swept too")
    if any(not s.strip() for s in sessions):
        raise ConfigError(f"--session takes a host session id (a container's plugbay.session label), got"
                          f" {next(s for s in sessions if not s.strip())!r}")
    _refuse_unused_flags(docker_, kubernetes, temp, {"--docker": (("--grace", grace),),
                                                     "--kubernetes": (("--namespace", namespace),
                                                                      ("--kubeconfig", kubeconfig)),
                                                     "--temp": (("--temp-dir", temp_dirs),)})
    if namespace is not None:  # "" was swept as "default"
        from plugbay.runners.kubernetes.options import valid_namespace

        valid_namespace(namespace, "--namespace", "--namespace plugins")
    found: dict[str, list[str]] = {}
    # what the Docker sweep left, and why: images and networks for their age (the grace), containers of gone
    # sessions that no record proves plugbay made (each with the `docker rm -f` to run if it is plugbay's)
    left: dict[str, str] = {}
    if docker_ or not (kubernetes or temp):
        from plugbay.runners.docker import sweep as docker_sweep, sweep_images, sweep_networks

        try:
            found["docker"] = docker_sweep(dry_run=dry_run, images=False, networks=False, grace=seconds, spared=left,
                                           sessions=sessions or None)
            found["docker_images"] = found["docker_networks"] = []
            if not sessions:  # the images and networks are the whole engine's, no session's
                # after the containers: their images free (a dry run counts the containers it listed as gone)
                leaving = found["docker"] if dry_run else []
                found["docker_images"] = sweep_images(dry_run=dry_run, leaving=leaving, grace=seconds, spared=left)
                # and their networks: the whole engine's, which the library's sweep() leaves unless asked
                found["docker_networks"] = sweep_networks(dry_run=dry_run, leaving=leaving, grace=seconds,
                                                          spared=left)
        except EngineUnavailableError as exc:
            if docker_:
                raise
            # not asked for by name: the temp folders are still swept, and the engine's absence said
            output.error(f"docker skipped: {output.one_line(str(exc))}")
    if kubernetes:
        from plugbay.runners.kubernetes import sweep as kube_sweep

        with output.kubernetes_flags("--kubeconfig"):
            found["kubernetes"] = kube_sweep(namespace or "default", kubeconfig=kubeconfig, dry_run=dry_run)
    if temp or not (docker_ or kubernetes):  # after the runners': a container's socket folder goes with it
        from plugbay.core.transport.tempdirs import sweep_tempdirs

        found["temp"] = sweep_tempdirs(temp_dirs or None, dry_run=dry_run)
    count = sum(len(v) for v in found.values())
    if as_json:
        output.emit_json({**found, **({"left": left} if "docker" in found else {}), "count": count,
                          "dry_run": dry_run})
        return output.OK
    verb = "would remove" if dry_run else "removed"
    for where, ids in found.items():
        for ident in ids:
            output.say(f"{where} {short_id(ident) if where.startswith('docker') else ident}")
    for ident, why in left.items():
        output.say(f"left {short_id(ident)}: {why}")
    output.say(f"{verb} {count}", style="bold")
    return output.OK


def _refuse_unused_flags(docker_: bool, kubernetes: bool, temp: bool,
                        options: dict[str, tuple[tuple[str, object], ...]]) -> None:
    """The options of a sweep (``options``: by the flag that asks for it) are refused when that sweep is not
    done, as run's options of another runner are: `sweep --namespace plugins` (no --kubernetes) swept Docker
    and the temp folders, and no pod."""
    swept = {"--docker": (docker_ or not (kubernetes or temp), "Docker"), "--kubernetes": (kubernetes, "pods"),
             "--temp": (temp or not (docker_ or kubernetes), "the temp folders")}
    doing = " and ".join(what for on, what in swept.values() if on)
    for flag, given in options.items():
        on, what = swept[flag]
        output.refuse_unused(given, on, flag, f"it only applies to the sweep of {what}, and this one sweeps {doing}")


def short_id(ident: str) -> str:
    """A Docker id as `docker ps` / `docker images` show it (12 hex digits, no "sha256:")."""
    return ident.removeprefix("sha256:")[:12]
