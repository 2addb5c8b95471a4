"""The canary split from settings or from a file that a rollout edits at run time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.settings import Settings
from gateway.traffic import CanarySplit, CanarySplitSource
from tests.gateway import images
from tests.gateway.conftest import MakeClient


def write(path: Path, content: object, mtime: int) -> None:
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    os.utime(path, ns=(mtime, mtime))  # a distinct mtime per write, however fast the test runs


def test_split_from_settings() -> None:
    assert CanarySplitSource(Settings(canary_percent=5)).current() == CanarySplit("canary", 5.0)


def test_split_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    source = CanarySplitSource(Settings(canary_file=path))
    source.refresh()
    assert source.current() == CanarySplit("canary", 0.0) and source.problem is None  # no file yet
    write(path, {"canary_label": "canary", "canary_percent": 10.0}, 1)
    assert source.current().percent == 0.0  # requests never read the file themselves
    source.refresh()
    assert source.current() == CanarySplit("canary", 10.0)
    for index, bad in enumerate(
        ("{not json", {"canary_percent": 150}, {"canary_label": "no spaces", "canary_percent": 5})
    ):
        write(path, bad, index + 2)
        source.refresh()
        assert source.current() == CanarySplit("canary", 10.0), bad  # the last good split stays
        assert source.problem is not None and str(path) in source.problem
    write(path, {"canary_label": "stable", "canary_percent": 50}, 100)
    source.refresh()
    assert source.current() == CanarySplit("canary", 10.0)  # never the stable label
    assert source.problem is not None and "stable label" in source.problem
    path.unlink()
    source.refresh()
    assert source.current() == CanarySplit("canary", 10.0) and source.problem is None
    write(path, {"canary_label": "canary", "canary_percent": 0}, 200)
    source.refresh()
    assert not source.current().enabled


def _hostile(path: Path, kind: str) -> None:
    if kind == "utf-16":
        path.write_text(json.dumps({"canary_label": "canary", "canary_percent": 5}), encoding="utf-16")
    elif kind == "deeply-nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "300-mib":
        with path.open("wb") as stream:
            stream.truncate(300 * 1024 * 1024)  # sparse: no disk used
    elif kind == "fifo":
        os.mkfifo(path)  # a read would wait forever for a writer
    elif kind == "directory":
        path.mkdir()


@pytest.mark.parametrize("kind", ["utf-16", "deeply-nested", "300-mib", "fifo", "directory"])
def test_an_unusable_file_keeps_the_split_and_fails_ready(
    make_client: MakeClient, tmp_path: Path, kind: str
) -> None:
    """Issue 13: UTF-16 or deeply nested JSON gave 500s while /ready stayed 200; a 300 MiB file was
    re-read every second on the request path; a FIFO hung every prediction."""
    path = tmp_path / "traffic.json"
    write(path, {"canary_label": "canary", "canary_percent": 100.0}, 1)
    client, fake = make_client(canary_file=path)
    assert client.get("/ready").status_code == 200
    path.unlink()
    _hostile(path, kind)
    source = client.app.state.canary_split  # type: ignore[attr-defined]
    source.refresh()  # what the thread does every second
    assert source.problem is not None and str(path) in source.problem
    response = client.post("/predict", files={"file": ("x.png", images.solid(1), "image/png")})
    assert response.status_code == 200  # the last good split still routes
    assert fake.calls[-1][1].label == "canary"
    ready = client.get("/ready")
    assert ready.status_code == 503 and "canary file" in ready.json()["error"]
    assert "Retry-After" in ready.headers


def test_the_app_routes_by_the_file(make_client: MakeClient, tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    write(path, {"canary_label": "canary", "canary_percent": 100.0}, 1)
    client, fake = make_client(canary_file=path)
    client.post("/predict", files={"file": ("x.png", images.solid(1), "image/png")})
    assert fake.calls[-1][1].label == "canary" and not fake.calls[-1][1].pinned
    assert client.get("/v1/model").json()["canary"] == {"label": "canary", "percent": 100.0}


def test_the_share_in_force_is_exported_for_the_rollout(make_client: MakeClient, tmp_path: Path) -> None:
    """Issue 14: k8s/rollout.py waits for aidetect_gateway_canary_percent on every gateway before
    it judges a canary; nobody exported it, so every rollout fell back to a fixed pause."""
    from k8s import canary_watch

    path = tmp_path / "traffic.json"
    write(path, {"canary_label": "canary", "canary_percent": 25.0}, 1)
    client, _ = make_client(canary_file=path)

    def share() -> list[float]:
        return canary_watch.parse_gauge(client.get("/metrics").text, canary_watch.CANARY_SHARE_METRIC)

    assert share() == [25.0]
    write(path, {"canary_label": "canary", "canary_percent": 0}, 2)
    assert share() == [25.0]  # not read yet
    client.app.state.canary_split.refresh()  # type: ignore[attr-defined]
    assert share() == [0.0]


def test_an_image_meets_one_version_for_a_given_share(make_client: MakeClient) -> None:
    """Issue 14: the split was random per request, so the same image uploaded twice during a
    rollout could get verdicts from two versions. Now its bytes choose: the same image always meets
    the same label; about the share of distinct images meets the canary; a batch sends each image
    where it would go alone (one Predict per version)."""
    client, fake = make_client(canary_percent=30.0)
    uploads = [images.solid(value) for value in range(0, 250, 2)]
    routes = []
    for data in uploads:
        labels = set()
        for _ in range(3):
            assert client.post("/predict", files={"file": ("x.png", data, "image/png")}).status_code == 200
            labels.add(fake.calls[-1][1].label)
        assert len(labels) == 1, labels
        routes.append(labels.pop())
    canary_share = routes.count("canary") / len(routes)
    assert 0.15 < canary_share < 0.45, canary_share  # 125 images, share 30%: within ~3 sd
    fake.calls.clear()
    batch = [("files", (f"{index}.png", data, "image/png")) for index, data in enumerate(uploads[:12])]
    response = client.post("/predict/batch", files=batch)
    assert response.status_code == 200
    items = response.json()["results"]
    assert [item["version_label"] for item in items] == routes[:12]
    assert len(fake.calls) == len(set(routes[:12]))  # one model call per version
