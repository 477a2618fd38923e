"""serve --trust-key: a fleet pulling versions from a shared store switches to signed ones only."""

from __future__ import annotations

import httpx
import pytest

from runtimes.serving.publish import publish
from tests.contract import cases_runtime as cr
from tests.runtimes.serving import bundles
from tests.runtimes.serving.server_process import ServerProcess, wait_until
from tests.signing_keys import write_key_pair
from toolkit.errors import TrustError


def _served(url: str) -> list[str]:
    answer = httpx.get(f"{url}/v1/models/m").json()
    return [e["version"] for e in answer["model_version_status"] if e["state"] == "AVAILABLE"]


def test_serve_switches_only_to_versions_signed_by_a_trusted_key(tmp_path):
    ours, _ = keys = write_key_pair(tmp_path, "ours")
    other, _ = write_key_pair(tmp_path, "other")
    base = tmp_path / "base"
    v1, v2 = cr.bundle("greedy_q"), bundles.greedy_q_v2()
    publish(v1, base, 1, sign_key=ours)
    args = (str(base), "--name", "m", "--poll-seconds", "0.1", "--trust-key", str(keys[1]))
    with ServerProcess(*args) as server:
        assert _served(server.url) == ["1"]
        publish(v2, base, 2)  # unsigned
        server.wait_for_log(r"model m: version 2 at .*/2 failed to load.*not signed")
        publish(v2, base, 3, sign_key=other)
        server.wait_for_log(r"version 3 at .*/3 failed to load.*does not hold")
        assert _served(server.url) == ["1"]
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'policy_serving_trust_refusals_total{model="m"} 2.0' in metrics
        publish(v2, base, 4, sign_key=ours)
        wait_until(lambda: _served(server.url) == ["4"])
    assert server.process.returncode == 0


def test_publish_with_a_trust_policy_takes_signed_bundles_only(tmp_path):
    from toolkit import bundle

    ours, public = write_key_pair(tmp_path, "ours")
    trust = bundle.TrustPolicy.from_files([public])
    with pytest.raises(TrustError, match="not signed"):
        publish(cr.bundle("greedy_q"), tmp_path / "base", 1, trust=trust)
    assert not (tmp_path / "base" / "1").exists()
    version = publish(cr.bundle("greedy_q"), tmp_path / "base", 1, sign_key=ours)
    # The signed version (its SavedModel mirror included) republishes under the policy.
    again = publish(version, tmp_path / "base2", 1, trust=trust)
    assert bundle.verify_bundle(again, trust)[bundle.MANIFEST]
