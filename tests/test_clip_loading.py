"""How promptd decides whether the model hub can be asked, before from_pretrained retries for minutes."""

from __future__ import annotations

import socket

from daemon.pipeline.analyze.loading import hub_reachable


def test_hub_reachable_with_hf_hub_offline_is_false() -> None:
    """HF_HUB_OFFLINE=1 means the local cache only, without trying the network."""
    assert hub_reachable({"HF_HUB_OFFLINE": "1"}) is False


def test_hub_reachable_with_a_closed_endpoint_is_false() -> None:
    """An endpoint that refuses connections counts as unreachable (cache only)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert hub_reachable({"HF_ENDPOINT": f"http://127.0.0.1:{port}"}, timeout_s=1.0) is False


def test_hub_reachable_with_a_listening_endpoint_is_true() -> None:
    """An endpoint that accepts a TCP connection counts as reachable."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert hub_reachable({"HF_ENDPOINT": f"http://127.0.0.1:{port}"}, timeout_s=1.0) is True
