"""Plugins as Kubernetes pods (official kubernetes client).

The runner creates one pod per plugin, watches it until its container runs,
follows its log stream for the handshake line (the plugin listens on TCP:
PLUGBAY_LISTEN=tcp:0.0.0.0:<container_port>), and maps the announced address
to one the host can dial: the pod IP in-cluster, or a local 127.0.0.1 listener
that port-forwards through the API server from outside the cluster.

Pod logs merge stdout and stderr, so the line that parses as a handshake goes
to :meth:`stdout_lines` and every other line to :meth:`stderr_lines` (the log pump).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from plugbay.errors import ConfigError, PodStartTimeoutError, RunnerError
from plugbay.runners.kubernetes import owner, podaddress, pods
from plugbay.runners.command import check_text_env
from plugbay.runners.base import (AttachedRunner, LaunchSpec, Runner, attach_time_left, killed_while_starting,
                                  register_reattacher, reuse_refused, start_deadline)
from plugbay.runners.attached import UNKNOWN_EXIT_CODE
from plugbay.runners.session import managed_labels
from plugbay.runners.kubernetes.api import (DEFAULT_API_TIMEOUT, api_host, check_api_timeout, default_namespace,
                                            in_cluster, load_api_client, reattach_kubeconfig)
from plugbay.runners.kubernetes.budget import StartBudget
from plugbay.runners.kubernetes.options import (check_api_client, check_namespace, check_settings, pod_unproven,
                                                reattach_fields)
from plugbay.runners.reattachkey import DIGEST, SECRET, digest, new_secret, secret_of
from plugbay.runners.kubernetes.podapi import PodApi
from plugbay.runners.kubernetes.rbac import denied_message
from plugbay.runners.kubernetes.forwards import PortForwards
from plugbay.core.transport.lines import drain
from plugbay.runners.kubernetes.logs import PodLogs
from plugbay.runners.kubernetes.portforward import PortForwarder
from plugbay.runners.kubernetes.teardown import PodTeardown
from plugbay.runners.kubernetes.watch import PodWatch


class KubernetesRunner(PodTeardown, Runner):
    """Runs a plugin image as a pod. One runner, one pod."""

    def __init__(self, image: str, *, namespace: str | None = None, pull_policy: str = "IfNotPresent",
                 labels: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None,
                 resources: Mapping[str, Any] | None = None, service_account: str | None = None,
                 node_selector: Mapping[str, str] | None = None,
                 tolerations: Sequence[Mapping[str, Any]] | None = None,
                 pod_template: Mapping[str, Any] | None = None, container_port: int = 4000,
                 address_mode: str = "auto", api_client: Any = None, kubeconfig: str | None = None,
                 context: str | None = None, start_timeout: float = 120.0, run_as_user: int | None = None,
                 writable_dirs: Sequence[str] = ("/tmp",), command: Sequence[str] | None = None,
                 args: Sequence[str] | None = None, host_id: str | None = None,
                 owner_reference: bool = True, api_timeout: float | None = None,
                 allow_loopback: bool = False) -> None:
        # pod_template comes back as a plain-data copy: the pod is built from what was checked
        writable_dirs, command, args, run_as_user, start_timeout, kubeconfig, pod_template = check_settings(locals())
        self.image = image
        self._opts: dict[str, Any] = dict(pull_policy=pull_policy, labels=dict(labels or {}), env=dict(env or {}),
                          resources=resources, service_account=service_account, node_selector=node_selector,
                          tolerations=tolerations, template=pod_template, run_as_user=run_as_user,
                          writable_dirs=writable_dirs, command=command, args=args)
        self.container_port = container_port
        self.start_timeout = float(start_timeout)
        # each API call's connect and wait for an answer (log streams: until their head); see api.py
        self.api_timeout = check_api_timeout(min(DEFAULT_API_TIMEOUT, start_timeout) if api_timeout is None
                                             else api_timeout)
        self.host_id = owner.host_identity(host_id)
        self.owner_reference = owner_reference
        self.allow_loopback = allow_loopback  # in-cluster: may the pod's IP be loopback (see podaddress.pod_address)
        self._reattached = False  # made by attach(): a refusal's advice names attach's allow_loopback
        self._kubeconfig, self._context = kubeconfig, context
        self._owns_client = api_client is None
        self.namespace = namespace or default_namespace(kubeconfig, context)
        check_namespace(pod_template, self.namespace)  # before a client is made that would need closing
        if api_client is None:
            api_client, from_sa = load_api_client(kubeconfig, context)
        else:
            check_api_client(api_client, "KubernetesRunner")
            from_sa = in_cluster()
        self._api_client = api_client
        self.address_mode = address_mode if address_mode != "auto" else (
            "in-cluster" if from_sa else "port-forward")
        self._pod = PodApi(api_client, self.namespace, self.api_timeout)  # pod_name and uid live there
        self._podwatch = PodWatch(self._pod.api, self.namespace, self._read_pod, self.api_timeout)
        self._logs = PodLogs("", self.api_timeout)
        self._forwards = PortForwards()
        self._killed = False
        self._lock = threading.Lock()
        self._ended = False  # killed or detached
        self._after_start: float | None = None  # a reattach's start_timeout once the Client's start is over
        self._diagnosis: str | None = None
        self._reattach_secret = new_secret()  # reattach data holds it, the pod's annotation its digest (reattachkey)

    # --- identity ------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.image

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    @property
    def pod_name(self) -> str:
        return self._pod.pod_name

    @pod_name.setter
    def pod_name(self, name: str) -> None:
        self._pod.pod_name = name

    # --- API calls (plugbay.runners.kubernetes.podapi: each bounded by api_timeout) --

    def _read_pod(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The runner's pod; None once gone, also when a pod with another UID took its name."""
        pod = self._pod.read_pod(timeout=timeout)
        if pod is not None and self._pod.uid and (pod.get("metadata") or {}).get("uid") != self._pod.uid:
            return None
        return pod

    # --- start ---------------------------------------------------------------

    @property
    def start_called(self) -> bool:
        return bool(self.pod_name)

    def start(self, spec: LaunchSpec) -> None:
        check_text_env(spec.env, f"KubernetesRunner for {self.image!r}")
        # the Client's start_timeout (spec.deadline) bounds the start as well as the runner's own: see budget.py
        budget = StartBudget(f"KubernetesRunner for {self.image!r}", api_host(self._api_client), self.api_timeout,
                             self.start_timeout, spec.deadline)
        with self._lock:
            if self._killed or self._ended:
                raise reuse_refused(f"runner for {self.image}", "killed" if self._killed else "detached", "pod")
            if self.pod_name:
                raise RunnerError(f"runner for {self.image} already started pod {self.id}; make a new runner")
            budget.bound("create the pod", "it made no pod")  # no time left: no pod, and no name for kill()
            self.pod_name = pods.pod_name_for(self.image)  # under the lock: a kill() from now on sees it
        from kubernetes import client

        env = {**self._opts["env"], **spec.env, "PLUGBAY_LISTEN": f"tcp:0.0.0.0:{self.container_port}"}
        managed = managed_labels()
        labels = {**self._opts["labels"], **spec.labels, **{k: v for k, v in managed.items()
                                                             if k != "plugbay.host"}}
        self._logs.name = self.pod_name
        if self.host_id:
            labels[owner.HOST_ID] = self.host_id
        manifest = pods.build_pod(name=self.pod_name, image=self.image, labels=labels,
                                  annotations={"plugbay.host": managed["plugbay.host"],
                                               DIGEST: digest(self._reattach_secret)}, env=env,
                                  container_port=self.container_port,
                                  **{k: v for k, v in self._opts.items() if k not in ("labels", "env")})
        ref = owner.owner_reference(self.namespace) if self.owner_reference else None
        if ref is not None:  # the cluster deletes the plugin pod with the host's pod
            manifest["metadata"]["ownerReferences"] = [ref]
        body = client.V1Pod.from_dict(manifest)
        self._pod.create(body, budget)
        try:
            self._killed_while_creating()
            self._start_watcher()
            self._await_running(budget)
            self._follow_logs(budget)
            self._raise_if_killed()  # by a kill() once the pod ran: its log is shut, a start gone well would read it
        except BaseException:
            self._start_failed()
            raise

    def _killed_while_creating(self) -> None:
        """A kill() during the create found no pod yet (404): delete the one the create made, by its UID."""
        with self._lock:
            killed = self._killed
        if not killed:
            return
        self._pod.delete(0)  # its failure says the pod may still run and how to delete it
        self._podwatch.update(None, True)
        raise RunnerError(f"runner for pod {self.id} was killed while it created the pod; plugbay deleted the pod"
                          f" (UID {self._pod.uid or '?'}). Make a new runner to start the plugin again")

    def _raise_if_killed(self) -> None:
        """start() ends once a kill() from another thread came: the pod is being deleted."""
        with self._lock:
            killed = self._killed
        if killed:
            raise killed_while_starting(f"runner for pod {self.id}", "pod", "deleted it")

    def _await_running(self, budget: StartBudget) -> None:
        deadline = budget.wait_until
        while True:
            self._raise_if_killed()  # a kill() whose delete the watch never showed (a throttled or silent API)
            with self._podwatch.cond:
                pod, gone = self._podwatch.pod, self._podwatch.gone
                if pod is not None and pods.is_running(pod):
                    return
                watch_error = self._podwatch.error
            if watch_error is not None:
                raise watch_error
            wait = budget.diagnosis_timeout  # the explaining reads: see budget.py
            if gone:
                raise RunnerError(f"pod {self.id} was deleted while starting.\n{self._diagnose(wait())}")
            if pod is not None:
                failure = pods.start_failure(pod, self.id, [], [])
                if failure is not None:  # only then fetch the logs and events for the message
                    failure = pods.start_failure(pod, self.id, self._logs_tail(wait()),
                                                 self._pod.events(wait())) or failure
                    self._diagnosis = self._diagnose(wait())
                    raise failure
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                watch = self._podwatch
                failing = f" The pod watch is failing ({watch.last_failure})." if watch.failures else ""
                if budget.ended_by_client:
                    raise PodStartTimeoutError(
                        f"the Client's start_timeout ran out while pod {self.id} was not Running yet (phase"
                        f" {pods.phase(pod or {})}), so the runner gave up starting the plugin; the pod is"
                        " deleted. Raise ClientConfig.start_timeout for slow image pulls (the runner's own"
                        f" start_timeout, {self.start_timeout:g}s, bounds the wait too), or check the"
                        f" cluster.{failing}\n{self._diagnose(wait())}")
                raise PodStartTimeoutError(
                    f"pod {self.id} did not reach Running within {self.start_timeout:g}s, the runner's"
                    f" start_timeout (phase {pods.phase(pod or {})}). Raise the runner's start_timeout for slow"
                    f" image pulls, or check the cluster.{failing}\n{self._diagnose(wait())}")
            with self._podwatch.cond:
                self._podwatch.cond.wait(timeout=min(remaining, 1.0))

    def _logs_tail(self, timeout: float | None = None) -> list[str]:
        return list(self._logs.tail) if self._logs.tail else self._pod.logs_tail(timeout)

    # --- the pod watch (plugbay.runners.kubernetes.watch) -------------------

    def _start_watcher(self) -> None:
        self._podwatch.uid = self._pod.uid
        self._podwatch.start(self.pod_name)

    # --- logs: handshake to stdout, everything else to stderr ----------------------

    def _follow_logs(self, budget: StartBudget) -> None:
        # in the caller: a 403, an unreachable API or the Client's deadline fails start()
        first = self._pod.open_log(None, first=True, budget=budget)
        watched = self._podwatch
        self._logs.follow(first, self._pod.open_log, lambda: not watched.stop.is_set() and not watched.gone
                          and pods.is_running(watched.pod or {}), lambda: watched.update(None, True))

    def stdout_lines(self) -> Iterator[str]:
        return drain(self._logs.stdout)

    def stderr_lines(self) -> Iterator[str]:
        return drain(self._logs.stderr)

    # --- addresses -----------------------------------------------------------

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        if network != "tcp":
            raise ConfigError(f"a plugin in a pod must listen on TCP, but it announced {network}:{address};"
                              " serve it with plugbay's serve() (it honours PLUGBAY_LISTEN) or listen on TCP")
        port = int(address.rsplit(":", 1)[1])
        if self.address_mode == "in-cluster":
            return "tcp", self._pod_address(port)
        return "tcp", self._forwards.take(port, lambda: self._forwarder(port), lambda: RunnerError(
            f"runner for pod {self.id} was killed or detached while its port-forward opened; start a new runner"
            " (or reattach) to reach the plugin"))

    def _forwarder(self, port: int) -> PortForwarder:
        # start_timeout also bounds each stream's connect + WebSocket upgrade: an API server that takes the
        # connection and never answers fails start, not hangs it. Within the Client's start (its mapping of the
        # plugin's address) the first stream's open is one more request of the start: bounded by what is left
        # of it, as start()'s API calls are. Later streams (gRPC's reconnects) come after the start.
        budget = StartBudget(f"KubernetesRunner for {self.image!r}", api_host(self._api_client), self.start_timeout,
                             self.start_timeout, start_deadline())
        return budget.call(lambda bound: PortForwarder(
            self._api_client.configuration, self.namespace, self.pod_name, port,
            denied_message("create", "pods/portforward", self.namespace), timeout=self.start_timeout,
            gone=lambda: self._podwatch.gone, probe_timeout=bound), f"open a port-forward to pod {self.id} port {port}",
            "the Client ends the pod it started (a reattached one it leaves running)")

    def connect_detail(self) -> str:
        return self._forwards.error_detail()

    def release_address(self, network: str, address: str) -> None:
        """A brokered channel to ``address`` closed: its port-forward stops with its last user."""
        if network == "tcp":
            self._forwards.release(address)

    def adopted(self) -> None:
        """The reattaching Client started: port-forward opens from now on have the runner's own bound."""
        later, self._after_start = self._after_start, None
        if later is not None:
            self.start_timeout = later
            self._forwards.set_timeout(later)

    def _pod_address(self, port: int) -> str:
        if self._podwatch.gone:  # its last IP may be another pod's by now
            raise RunnerError(f"pod {self.id} is gone (deleted, or its name is another pod's): it cannot be dialled")
        return podaddress.pod_address(self._podwatch.pod or self._read_pod() or {}, port, self.id,
                                      allow_loopback=self.allow_loopback, reattached=self._reattached)

    def host_to_plugin(self, network: str, address: str) -> tuple[str, str]:
        # A per-connection broker listens on the host's unix sockets, which no pod can
        # reach; refusing here fails the call at once instead of in the plugin's dial.
        raise RunnerError(
            f"a plugin in pod {self.id} cannot reach host address {network}:{address}; brokered callbacks"
            " to a pod need ClientConfig(multiplex_broker=True), which carries them over the plugin's"
            " own connection (go-plugin 1.0.1 plugins cannot multiplex)")

    # --- wait, diagnose (kill, force_kill, detach, the pod's deletion: teardown.PodTeardown) --

    def wait(self, timeout: float | None = None) -> int | None:
        if not self.pod_name:  # no pod yet: a watch started now would watch no name, and never the pod
            return None
        self._start_watcher()
        return self._podwatch.wait_exit(timeout)

    def exit_words(self, code: int) -> str:
        # UNKNOWN_EXIT_CODE is wait()'s word for a pod that ended with none: told as a pod's end, not the base's
        return self._podwatch.unrecorded_end(self.id) if code == UNKNOWN_EXIT_CODE else super().exit_words(code)

    def exit_advice(self, code: int | None, last: Sequence[str]) -> str | None:
        return pods.pod_not_run(code, last)  # the image's command, as when the pod's end tells the host first

    def diagnose(self) -> str:
        return self._diagnose(None)

    def _diagnose(self, timeout: float | None) -> str:
        """diagnose(), each read bounded by ``timeout`` (None: api_timeout)."""
        if self._diagnosis and self._killed:
            return self._diagnosis
        pod = self._podwatch.pod
        if not self._killed:
            try:
                pod = self._read_pod(timeout) or pod
            except RunnerError:
                pass
        events = self._pod.events(timeout) if not self._killed else []
        return pods.describe(pod, self._podwatch.gone, events, list(self._logs.tail))

    # --- reattach ------------------------------------------------------------

    def reattach_data(self) -> dict[str, Any]:
        return {"kind": "KubernetesRunner", "id": self.id, "namespace": self.namespace, "pod": self.pod_name,
                "image": self.image, "container_port": self.container_port,
                "address_mode": self.address_mode, "kubeconfig": self._kubeconfig, "context": self._context,
                SECRET: self._reattach_secret}

    @classmethod
    def attach(cls, data: Mapping[str, Any], api_client: Any = None, *, kubeconfig: str | None = None,
               context: str | None = None, start_timeout: float | None = None,
               api_timeout: float | None = None, allow_loopback: bool = False) -> KubernetesRunner:
        """A runner for a pod another host started (reattach by namespace/pod name).

        The API is reached with ``api_client``, else ``kubeconfig``/``context``, else this host's
        own configuration: never with a kubeconfig the (untrusted) data names (see reattach_kubeconfig).
        The timeouts are this host's too, never the data's: ``start_timeout`` (bounding port-forward
        opens) and ``api_timeout`` default as for a new runner. While the reattaching Client starts,
        what is left of its start_timeout bounds the pod's read and the port-forward's opens as well;
        once it started (:meth:`adopted`), later opens and kill() have the runner's own bounds."""
        fields = reattach_fields(data)
        if api_client is None:
            kubeconfig, context = reattach_kubeconfig(data.get("kubeconfig"), data.get("context"), kubeconfig,
                                                      context)
        left = attach_time_left()
        if start_timeout is None:
            start_timeout = 120.0
        runner = cls(fields["image"], namespace=fields["namespace"], container_port=fields["container_port"],
                     address_mode=fields["address_mode"], api_client=api_client, kubeconfig=kubeconfig,
                     context=context, start_timeout=start_timeout, api_timeout=api_timeout,
                     allow_loopback=allow_loopback)
        runner.pod_name = fields["pod"]
        runner._reattached = True
        if left is not None:
            runner._after_start, runner.start_timeout = runner.start_timeout, min(max(left, 0.1), start_timeout)
        # the Client's start bounds this read also when the host chose a longer api_timeout
        runner._pod.timeout = min(runner.api_timeout, max(left, 0.1)) if left is not None else runner.api_timeout
        try:
            pod = runner._read_pod()  # a silent API server fails the reattach
        except BaseException:
            runner._close()
            raise
        finally:
            runner._pod.timeout = runner.api_timeout  # kill() and the rest: the runner's own bound
        if pod is None:
            runner._close()
            raise RunnerError(f"cannot reattach: pod {runner.id} no longer exists")
        refused = pod_unproven(pod, runner.id, data)
        if refused is not None:
            runner._close()  # reattach data is untrusted: never take (and later delete) a pod it does not prove
            raise refused
        runner._reattach_secret = secret_of(data)  # proven: the runner's reattach_data() passes it on
        runner._pod.uid = str((pod.get("metadata") or {}).get("uid") or "")
        runner._podwatch.update(pod, False)
        runner._start_watcher()
        return runner


def _reattach(data: Mapping[str, Any]) -> AttachedRunner:
    return KubernetesRunner.attach(data)


register_reattacher("KubernetesRunner", _reattach)

