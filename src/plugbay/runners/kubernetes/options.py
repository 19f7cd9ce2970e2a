"""KubernetesRunner's constructor checks: each option's type and range, so a wrong one is a ConfigError
naming it before any client is loaded or pod made, not a TypeError from the pod manifest at start()."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from plugbay.core.protocol.checks import finite_float
from plugbay.core.protocol.handshake import is_tcp_port
from plugbay.errors import ConfigError, ReattachError
from plugbay.runners.command import check_env, check_text_env
from plugbay.runners.kubernetes.names import LABEL_RULE as _LABEL_RULE, SUBDOMAIN_RULE as _SUBDOMAIN_RULE
from plugbay.runners.kubernetes.names import dns_label, dns_subdomain, reattach_pod
from plugbay.runners.kubernetes.wsupgrade import api_url_problem
from plugbay.runners.reattachkey import DIGEST, secret_unproven
from plugbay.runners.session import MANAGED
from plugbay.runners.options import (flag, optional_int, optional_mapping, optional_str, optional_str_list,
                                     plain_data, required_str, str_mapping)

MAX_START_TIMEOUT = 86400.0  # a day: enough for any image pull, and a time every socket accepts
ADDRESS_MODES = ("auto", "in-cluster", "port-forward")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
MAX_UID = 2**31 - 1  # what a pod's runAsUser may say


Kept = tuple[tuple[str, ...], "list[str] | None", "list[str] | None", "int | None", float, "str | None",
             "dict[str, Any] | None"]


def check_settings(opts: Mapping[str, Any]) -> Kept:
    """Check KubernetesRunner's constructor arguments (``opts``: its locals); returns what is kept of them:
    writable_dirs as a tuple without repeats (one str is one folder), command and args as lists (a
    generator is read once), run_as_user as an int and start_timeout as a float (a numpy scalar in the
    pod manifest fails its JSON), kubeconfig as a str (the client reads a path-like as no file), and
    pod_template as plain data (runners.options.plain_data)."""
    if opts["address_mode"] not in ADDRESS_MODES:
        raise ConfigError(f"address_mode must be one of {ADDRESS_MODES}, not {opts['address_mode']!r}")
    if opts["pull_policy"] not in PULL_POLICIES:
        raise ConfigError(f"pull_policy must be Always, IfNotPresent or Never, not {opts['pull_policy']!r}")
    if not is_tcp_port(opts["container_port"]):
        raise ConfigError(f"container_port must be a TCP port, an int from 1 to 65535, not {opts['container_port']!r}")
    where = "KubernetesRunner "
    required_str(opts["image"], where + "image", "plugbay-kv:latest")
    for option, example in (("service_account", "plugbay-plugin"), ("context", "kind-plugbay")):
        optional_str(opts[option], where + option, example)
    valid_namespace(opts["namespace"], where + "namespace")
    if opts["service_account"] is not None and not dns_subdomain(opts["service_account"]):
        raise ConfigError(f"{where}service_account must be a Kubernetes ServiceAccount name: {_SUBDOMAIN_RULE}, got"
                          f" {opts['service_account']!r:.80}; pass e.g. service_account='plugbay-plugin'")
    optional_str(opts["host_id"], where + "host_id", "host-1", empty=True)  # "": PLUGBAY_HOST_ID or the pod's
    kubeconfig = opts["kubeconfig"]
    if kubeconfig is not None and not isinstance(kubeconfig, (str, os.PathLike)):
        raise ConfigError(f"{where}kubeconfig must be a path to a kubeconfig file (or None), got {kubeconfig!r:.80}")
    kubeconfig = None if kubeconfig is None else os.fspath(kubeconfig)
    if isinstance(kubeconfig, bytes):  # a bytes path-like: named as the OS names files
        kubeconfig = os.fsdecode(kubeconfig)
    for key in str_mapping(opts["labels"], where + "labels", {"team": "search"}):
        if not label_key(key):  # values need no check: pods.label_value makes any str a valid one
            raise ConfigError(f"{where}labels has the key {key!r:.80}, which is no Kubernetes label key: an optional"
                              f" prefix ({_SUBDOMAIN_RULE}) and '/', then a name of at most 63 letters, digits, '-',"
                              " '_' and '.', starting and ending with a letter or digit; pass e.g. {'team': 'search'}")
    if opts["env"] is not None:
        check_env(opts["env"], where + "env")
        check_text_env(opts["env"], where + "env")
    str_mapping(opts["node_selector"], where + "node_selector", {"kubernetes.io/os": "linux"})
    optional_mapping(opts["resources"], where + "resources", "{'limits': {'cpu': '500m', 'memory': '128Mi'}}")
    # checked and merged as plain data (a copy: a caller's later change to its own dict is not seen)
    template = plain_data(optional_mapping(opts["pod_template"], where + "pod_template",
                                           "{'spec': {'priorityClassName': 'low'}}"), where + "pod_template")
    check_template(template)
    tolerations = opts["tolerations"]
    if tolerations is not None and (isinstance(tolerations, (str, bytes)) or not isinstance(tolerations, Sequence)
                                    or not all(isinstance(t, Mapping) for t in tolerations)):
        raise ConfigError(f"{where}tolerations must be a list of dicts such as [{{'key': 'gpu', 'operator':"
                          f" 'Exists'}}] (or None), got {tolerations!r:.80}")
    run_as_user = optional_int(opts["run_as_user"], where + "run_as_user", 0, MAX_UID, "the container's user id")
    command = optional_str_list(opts["command"], where + "command", ("/plugin",))
    args = optional_str_list(opts["args"], where + "args", ("--verbose",))
    flag(opts["owner_reference"], where + "owner_reference")
    flag(opts["allow_loopback"], where + "allow_loopback")
    start_timeout = opts["start_timeout"]
    seconds = finite_float(start_timeout)
    if seconds is None or not 0 < seconds <= MAX_START_TIMEOUT:
        # it also bounds each port-forward upgrade's socket waits, which refuse NaN and past time_t
        raise ConfigError(f"start_timeout must be a positive number of seconds up to {MAX_START_TIMEOUT:.0f},"
                          f" not {start_timeout!r}; pass e.g. start_timeout=120")
    dirs = opts["writable_dirs"]
    dirs = [dirs] if isinstance(dirs, str) else dirs
    if isinstance(dirs, (bytes, bytearray, Mapping)) or not isinstance(dirs, Iterable):
        dirs = [None]  # refused below, named as given
    dirs = list(dirs)  # a set or a generator too (read once)
    if any(not isinstance(d, str) or not d.startswith("/") or "\0" in d for d in dirs):
        raise ConfigError(f"writable_dirs must be absolute paths in the container, e.g. ('/tmp', '/data'),"
                          f" not {opts['writable_dirs']!r:.80}")
    # each folder is an emptyDir mount: a path twice would be two mounts there, which the API refuses
    return tuple(dict.fromkeys(dirs)), command, args, run_as_user, seconds, kubeconfig, template


def check_template(template: Mapping[str, Any] | None) -> None:
    """Refuse what a pod_template may not set: the runner's own restartPolicy (its namespace: check_namespace),
    or a spec or metadata that is no dict (merged over the runner's, it would replace it whole)."""
    for part in ("spec", "metadata"):
        if template is not None and part in template and not isinstance(template[part], dict):
            raise ConfigError(f"KubernetesRunner pod_template's {part} must be a dict, got {template[part]!r:.80}"
                              f" ({type(template[part]).__name__}); drop it or pass e.g. {{'{part}': {{...}}}}")
    spec = template.get("spec") if template is not None else None
    policy = spec.get("restartPolicy", "Never") if isinstance(spec, Mapping) else "Never"
    if policy != "Never":
        # a restarted container is a new plugin process whose handshake no host reads, under the old address
        said = "to null" if policy is None else f"{policy!r:.40}"
        raise ConfigError(f"KubernetesRunner pod_template sets spec.restartPolicy {said}, but the runner's"
                          " pod must not restart (restartPolicy: Never): the host ran the plugin it started, and a"
                          " restarted one would be a new process it never shook hands with. Drop restartPolicy from"
                          " the template; restarting is the host's choice (plugbay's Supervisor starts a new pod)")


def valid_namespace(namespace: Any, where: str, example: str = "namespace='plugins'") -> str | None:
    """``namespace`` (None: the caller's default) named as the API server names namespaces, so a wrong one fails
    here and not at the API; "" names none (a sweep read it as "default")."""
    if namespace is None:
        return None
    if not isinstance(namespace, str):
        optional_str(namespace, where, "plugins")  # raises: not a str
    if not dns_label(namespace):
        raise ConfigError(f"{where} must be a Kubernetes namespace name: {_LABEL_RULE}, got {namespace!r:.80};"
                          f" pass e.g. {example}")
    return str(namespace)


def check_namespace(template: Mapping[str, Any] | None, namespace: str) -> None:
    """Refuse a pod_template whose metadata.namespace is not the runner's ``namespace``.

    The same one is let through: a template copied from ``kubectl get pod -o yaml`` carries it."""
    meta = template.get("metadata") if template is not None else None
    if isinstance(meta, Mapping) and "namespace" in meta and meta["namespace"] != namespace:
        raise ConfigError(f"KubernetesRunner pod_template sets metadata.namespace {meta['namespace']!r:.80}, but"
                          f" the runner creates its pod in its own namespace {namespace!r} (the API refuses a pod"
                          " whose namespace differs from the request's). Drop it from the template and pass"
                          f" namespace={meta['namespace']!r:.80} to KubernetesRunner instead")


def check_api_client(api_client: Any, where: str) -> Any:
    """``api_client`` (a caller-built kubernetes ApiClient), refused when its host is no API server's URL.

    A kubeconfig's server is refused as it is loaded (api.load_api_client); a caller's own client is
    refused here, as it is passed: the client library would take any host, and each call on it would
    fail as an answer that is "not a Kubernetes object" (urllib3's unknown scheme or missing host)."""
    configuration = getattr(api_client, "configuration", None)
    if configuration is None:  # no ApiClient's shape: its first call says what it is not
        return api_client
    host = getattr(configuration, "host", None)
    problem = (api_url_problem(host) if isinstance(host, str) else
               f"the Kubernetes API address {host!r} is not an http(s) URL")
    if problem is not None:
        raise ConfigError(f"{problem} (the host of the api_client= passed to {where}); build the ApiClient from a"
                          " Configuration whose host is the API server's URL, e.g. https://203.0.113.10:6443"
                          " (kubernetes.config.load_kube_config(client_configuration=...) sets it from a"
                          " kubeconfig), or pass kubeconfig= instead")
    return api_client


def label_key(key: str) -> bool:
    """A label key: [prefix/]name, the prefix a DNS-1123 subdomain, the name a qualified name."""
    prefix, slash, name = key.rpartition("/")
    return (not slash or dns_subdomain(prefix)) and len(name) <= 63 and re.fullmatch(
        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", name) is not None


def reattach_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The reattach data's pod facts, checked: it is untrusted input, so a wrong one is a ReattachError."""
    def bad(what: str) -> ReattachError:
        return ReattachError(f"reattach data for a pod needs {what}; pass the JSON that"
                             " Client.reattach_config().to_json() produced")
    namespace, pod = reattach_pod(data)
    fields: dict[str, Any] = {"namespace": namespace, "pod": pod}
    port = data.get("container_port", 4000)
    if not is_tcp_port(port):
        raise bad(f"'container_port' as a TCP port (1-65535), not {port!r}")
    mode = data.get("address_mode", "auto")
    if mode not in ADDRESS_MODES:
        raise bad(f"'address_mode' as one of {ADDRESS_MODES}, not {mode!r}")
    fields.update(image=str(data.get("image", "?")), container_port=port, address_mode=mode)
    return fields


def pod_unproven(pod: Mapping[str, Any], pod_id: str, data: Mapping[str, Any]) -> ReattachError | None:
    """Why the pod read for a reattach cannot be proven the one plugbay wrote ``data`` for (None: it can):
    it must carry plugbay's label and the digest of the data's reattach secret (runners.reattachkey)."""
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    labels, annotations = meta.get("labels"), meta.get("annotations")
    if not isinstance(labels, dict) or labels.get(MANAGED) != "true":
        return ReattachError(f"cannot reattach to pod {pod_id}: it lacks plugbay's label {MANAGED}=true, so plugbay"
                             " did not start it and leaves it alone. Pass the JSON that"
                             " Client.reattach_config().to_json() produced for a running plugin")
    namespace, _, name = pod_id.partition("/")
    return secret_unproven(data, annotations.get(DIGEST) if isinstance(annotations, dict) else None,
                           f"pod {pod_id}", "annotation", f"kubectl delete pod -n {namespace} {name}")
