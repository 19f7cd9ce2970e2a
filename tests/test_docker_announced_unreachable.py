"""A containerised plugin that announces an address its DockerRunner's transport can never carry (tcp under
the unix transport, a unix socket or another port under the tcp one) is refused from its handshake line alone:
an AnnouncedUnreachableError (a RunnerError) naming the fix, raised at once. It was a plain RunnerError after
the host first waited up to a second to learn whether the plugin exited, which no exit could change. A plugin
gone before its line was read is still told as its exit (tests/test_docker_runner.py). What the plugin wrote to
stderr by then is in the message (a plugin that then crashes may have said why there), as a PluginExitedError
shows it."""

from __future__ import annotations

import pytest

from plugbay import AnnouncedUnreachableError, Client, ClientConfig, RunnerError
from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.runners.docker import DockerRunner

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]
BASE = "plugbay-base:bookworm"

CASES = {
    "tcp-on-unix": ("unix", "tcp|0.0.0.0:4000", "with the unix transport it must put its socket in /plugbay/sock"),
    "unix-on-tcp": ("tcp", "unix|/plugbay/sock/plugin.sock", "only container port 4000 is published"),
    "port-on-tcp": ("tcp", "tcp|0.0.0.0:4001", "only container port 4000 is published"),
}


def refusal(transport: str, script: str) -> AnnouncedUnreachableError:
    """The AnnouncedUnreachableError a start of a container running `sh -c script` ends with (start_timeout far
    above the test's own bound: the refusal owes nothing to it)."""
    runner = DockerRunner(BASE, transport=transport, network=None, entrypoint=["sh", "-c", script])
    client = Client(ClientConfig(handshake=HandshakeConfig(1, "K", "V"), runner=runner, start_timeout=120,
                                 auto_mtls=False))
    try:
        with pytest.raises(AnnouncedUnreachableError) as err:
            client.start()
    finally:
        client.kill()
    return err.value


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", list(CASES))
def test_an_address_the_transport_cannot_carry_is_refused_from_the_line(case: str) -> None:
    transport, announced, words = CASES[case]
    said = str(refusal(transport, f"echo '1|1|{announced}|grpc|'; exec sleep 120"))
    assert f"announced {announced.replace('|', ':', 1)}" in said and words in said, said


@pytest.mark.timeout(90)
def test_the_refusal_carries_what_the_plugin_wrote_to_stderr() -> None:
    # the reviewer's case: a plugin that says why it fails, announces a port it does not serve, and then stops
    # (stderr and stdout come over two log streams: the second between them lets stderr's line arrive first)
    error = refusal("tcp", "echo 'fatal: no config' >&2; sleep 1; echo '1|1|tcp|0.0.0.0:4001|grpc|'; sleep 120;"
                    " exit 3")
    said = str(error)
    assert isinstance(error, RunnerError), said
    assert "only container port 4000 is published" in said, said
    assert "Its last stderr lines so far:\n    fatal: no config" in said, said
    assert error.stderr_tail == ["fatal: no config"], error.stderr_tail
