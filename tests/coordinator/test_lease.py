"""Posting an update renews the client's lease, like polling does."""

from __future__ import annotations

import time
from datetime import datetime

from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import create_federation, enroll, known_update, post_update, small_model, wait_task


def test_update_post_renews_the_lease(coordinator: CoordinatorProcess) -> None:
    model = small_model(2)
    with coordinator.client() as admin:
        fid = create_federation(admin, model, clients_per_round=2, rounds=3, lease_s=5)
        nodes = [enroll(admin, fid, f"n{i}") for i in range(2)]
        task = wait_task(nodes[0], fid)
        before = datetime.fromisoformat(nodes[0].http.get(f"/v1/federations/{fid}/clients/me").json()
                                        ["lease_expires_at"])
        time.sleep(1.2)
        _, body = known_update(model, 1, num_samples=4, base_version=task["model_version"])
        assert post_update(nodes[0], fid, task["round"], body).status_code == 201
        after = datetime.fromisoformat(nodes[0].http.get(f"/v1/federations/{fid}/clients/me").json()
                                       ["lease_expires_at"])
        # GET /clients/me does not renew (only polls and posts do), so the gap is the post's renewal.
        assert (after - before).total_seconds() >= 1.0
        for node in nodes:
            node.close()
