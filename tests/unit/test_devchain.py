import json
import socket
import urllib.request

import pytest

from chain.devchain import DEV_CHAIN_ID, Anvil
from chain.errors import DevChainError


def _rpc(url, method, params=None):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    # url: the test's own loopback anvil
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})  # noqa: S310
    return json.load(urllib.request.urlopen(req, timeout=5))  # noqa: S310


def test_anvil_answers_on_loopback_and_stops():
    with Anvil() as node:
        assert node.host == "127.0.0.1"
        assert int(_rpc(node.url, "eth_chainId")["result"], 16) == DEV_CHAIN_ID
        assert node.running
        port = node.port
    assert not node.running
    with pytest.raises(OSError):
        _rpc(f"http://127.0.0.1:{port}", "eth_chainId")


def test_anvil_not_reachable_on_other_interfaces():
    with Anvil() as node:
        # find a non-loopback address of this machine, if any
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP connect
            addr = s.getsockname()[0]
        except OSError:
            pytest.skip("no non-loopback interface")
        finally:
            s.close()
        if addr.startswith("127."):
            pytest.skip("no non-loopback interface")
        with pytest.raises(OSError):
            socket.create_connection((addr, node.port), timeout=1).close()


def test_anvil_snapshot_fixture_reverts(anvil):
    before = int(anvil.rpc("eth_blockNumber"), 16)
    anvil.rpc("anvil_mine", ["0x5"])
    assert int(anvil.rpc("eth_blockNumber"), 16) == before + 5


def test_anvil_port_in_use_is_a_clear_error():
    with Anvil() as first:
        with pytest.raises(DevChainError):
            Anvil(port=first.port, startup_timeout=5).start()
