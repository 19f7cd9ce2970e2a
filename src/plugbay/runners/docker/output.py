"""ContainerOutput, a base of DockerRunner: the plugin's output as read from its container's logs, and what
the runner says of a container that ended (its state, its last stderr lines, an OOM kill)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from plugbay.core.protocol.exits import not_run_advice
from plugbay.errors import RunnerError
from plugbay.runners.docker.diagnose import describe_container, oom_said
from plugbay.runners.docker.logs import ContainerLogStream


class ContainerOutput:
    """stdout_lines(), stderr_lines(), stderr_tail(), diagnose(), exit_reason(); DockerRunner sets the attributes
    (its start() the log pumps) and ContainerTeardown gives _inspect()."""

    image: str
    engine_timeout: float
    _client: Any
    _container_id: str
    _pumps: dict[str, ContainerLogStream]
    _final_state: dict[str, Any] | None

    def _inspect(self) -> dict[str, Any] | None:
        raise NotImplementedError  # ContainerTeardown's, before this class in DockerRunner's bases

    def stdout_lines(self) -> Iterator[str]:
        return self._pump("stdout").lines()

    def stderr_lines(self) -> Iterator[str]:
        return self._pump("stderr").lines()

    def _pump(self, which: str) -> ContainerLogStream:
        pump = self._pumps.get(which)
        if pump is None:
            raise RunnerError(f"DockerRunner.start() must run before the plugin's {which} is read"
                              " (a reattached container's output is not replayed)")
        return pump

    def stderr_tail(self) -> list[str]:
        pump = self._pumps.get("stderr")
        return list(pump.tail) if pump else []

    def diagnose(self) -> str:
        state = self._final_state if self._final_state is not None else self._inspect()
        return describe_container(self._container_id, self.image, state, self._pumps, self._client)

    def exit_advice(self, code: int | None, last: Sequence[str]) -> str | None:
        # a shell-form ENTRYPOINT/CMD (or entrypoint=["/bin/sh", "-c", ...]) runs; its program is not in the image
        return not_run_advice(code, last, "the container's entrypoint/command", "in the image",
                              "Check DockerRunner's entrypoint=/command= (else the image's ENTRYPOINT/CMD, `docker"
                              f" image inspect {self.image}`) and the image's PATH: the program must be in the image"
                              " (on its PATH, or a full path) and executable.")

    def exit_reason(self, code: int) -> str:
        # a call's error waits for it (a hung engine held each for all of engine_timeout): a short bound
        return oom_said(self._client, self._container_id, code, self._final_state, min(self.engine_timeout, 1.0))
