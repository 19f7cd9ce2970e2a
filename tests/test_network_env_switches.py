"""On/off environment variables of network mode take 1/true or 0/false; anything else is refused, named.

PLUGBAY_NETWORK_MULTIPLEX=no and =yes both turned brokering off, and PLUGBAY_NETWORK_INSECURE=yes left
TLS on (then failed asking for files the user meant not to give), all without a word; the gateway's
PLUGBAY_GATEWAY_INSECURE/_MULTIPLEX alike. A real plugin process (the KV example) and the gateway's
command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugbay.network.gateway.cli import parse

REPO = Path(__file__).resolve().parent.parent
KV = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]


@pytest.mark.parametrize(("name", "value"), [("PLUGBAY_NETWORK_MULTIPLEX", "yes"),
                                             ("PLUGBAY_NETWORK_INSECURE", "yes")])
def test_a_network_plugin_refuses_a_switch_that_is_neither_on_nor_off(name: str, value: str) -> None:
    env = dict(os.environ, PLUGBAY_NETWORK_LISTEN="127.0.0.1:0", PLUGBAY_NETWORK_INSECURE="1")
    env[name] = value
    done = subprocess.run(KV, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert f"{name}='yes' is neither on nor off; set {name}=1 (on) or {name}=0 (off)" in done.stderr


def test_the_switches_still_take_what_they_documented() -> None:
    from plugbay.core.plugin.netconfig import NetworkServe

    for on in ("1", "true", "True", "TRUE"):
        served = NetworkServe.from_env({"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": on,
                                        "PLUGBAY_NETWORK_MULTIPLEX": "0"})
        assert served is not None and served.insecure and not served.multiplex
    served = NetworkServe.from_env({"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": "1",
                                    "PLUGBAY_NETWORK_MULTIPLEX": ""})
    assert served is not None and served.multiplex  # unset or empty: the default


@pytest.mark.parametrize("name", ["PLUGBAY_GATEWAY_INSECURE", "PLUGBAY_GATEWAY_MULTIPLEX"])
def test_the_gateway_refuses_a_switch_that_is_neither_on_nor_off(name: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:  # parse() only: the gateway's main would serve
        parse(["--cookie", "BASIC_PLUGIN=hello", "--insecure", "--", *KV], env={name: "yes"})
    assert usage.value.code == 2
    assert f"{name}='yes' is neither on nor off" in capsys.readouterr().err
    tls = ["--cert", "tls.crt", "--key", "tls.key", "--client-ca", "ca.crt"]  # --multiplex needs them
    config = parse(["--cookie", "BASIC_PLUGIN=hello", *([] if name.endswith("INSECURE") else tls), "--", *KV],
                   env={name: "TRUE"})
    assert config.insecure if name.endswith("INSECURE") else config.multiplex


def test_the_switches_take_gos_parsebool_spellings_and_nothing_more() -> None:
    """go's strconv.ParseBool takes t/f/T/F too (a go-plugin user's habit); they were refused."""
    from plugbay.core.plugin.netconfig import env_switch
    from plugbay.errors import ConfigError

    for on in ("1", "t", "T", "TRUE", "true", "True"):
        assert env_switch({"S": on}, "S", False) is True, on
    for off in ("0", "f", "F", "FALSE", "false", "False"):
        assert env_switch({"S": off}, "S", True) is False, off
    for neither in ("yes", "no", "on", "tRUE", "fALSE", "2", "y"):
        with pytest.raises(ConfigError, match="is neither on nor off"):
            env_switch({"S": neither}, "S", False)
