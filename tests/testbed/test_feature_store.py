"""Feature store: ingestion, entity lookups, export for the trainer."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from testbed.services.feature_store import FeatureTable, create_app
from tests.testbed.helpers import serve_app


def test_ingest_lookup_upsert(tmp_path: Path) -> None:
    t = FeatureTable(tmp_path / "f.sqlite")
    assert (
        t.ingest(
            [{"id": 1, "features": [0.5] * 64, "label": 3}, {"id": 2, "features": list(range(64))}]
        )
        == 2
    )
    row = t.get(2)
    assert row is not None and row["features"] == [float(i) for i in range(64)]
    assert row["label"] is None
    t.ingest([{"id": 2, "features": [1.0] * 64, "label": 7}])  # upsert
    assert t.get(2)["label"] == 7 and t.count() == 2
    assert [e["id"] for e in t.lookup([2, 99, 1])] == [1, 2]
    assert t.get(99) is None
    np.testing.assert_allclose(FeatureTable(tmp_path / "f.sqlite").get(1)["features"], 0.5)


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    t = FeatureTable(":memory:")
    with pytest.raises(ValueError, match=r"entities\[0\]"):
        t.ingest([{"features": [1.0]}])


def test_http_api(tmp_path: Path) -> None:
    with (
        serve_app(create_app(FeatureTable(tmp_path / "f.sqlite"))) as url,
        httpx.Client(base_url=url) as c,
    ):
        r = c.post(
            "/ingest",
            json={"entities": [{"id": i, "features": [i] * 4, "label": i % 2} for i in range(5)]},
        )
        assert r.json() == {"ingested": 5}
        assert c.get("/entities/3").json()["features"] == [3.0] * 4
        assert c.get("/entities/42").status_code == 404
        assert c.get("/entities/x").status_code == 400
        assert len(c.post("/lookup", json={"ids": [0, 4]}).json()["entities"]) == 2
        assert len(c.get("/export").json()["entities"]) == 5
        assert c.post("/ingest", json={"nope": 1}).status_code == 400
        assert b"features_entities 5.0" in c.get("/metrics").content
