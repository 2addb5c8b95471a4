"""The canary split from settings or from a file that a rollout edits at run time."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    now = [0.0]
    source = CanarySplitSource(Settings(canary_file=path), clock=lambda: now[0])
    assert source.current() == CanarySplit("canary", 0.0)  # no file yet: the settings' split
    write(path, {"canary_label": "canary", "canary_percent": 10.0}, 1)
    assert source.current().percent == 0.0  # not re-checked within a second
    now[0] += 1.0
    assert source.current() == CanarySplit("canary", 10.0)
    for bad in ("{not json", {"canary_percent": 150}, {"canary_label": "no spaces", "canary_percent": 5}):
        write(path, bad, int(now[0]) + 2)
        now[0] += 1.0
        assert source.current() == CanarySplit("canary", 10.0), bad  # the last good split stays
    write(path, {"canary_label": "stable", "canary_percent": 50}, 100)
    now[0] += 1.0
    assert source.current() == CanarySplit("canary", 10.0)  # never the stable label
    path.unlink()
    now[0] += 1.0
    assert source.current() == CanarySplit("canary", 10.0)
    write(path, {"canary_label": "canary", "canary_percent": 0}, 200)
    now[0] += 1.0
    assert not source.current().enabled


def test_the_app_routes_by_the_file(make_client: MakeClient, tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    write(path, {"canary_label": "canary", "canary_percent": 100.0}, 1)
    client, fake = make_client(canary_file=path)
    client.post("/predict", files={"file": ("x.png", images.solid(1), "image/png")})
    assert fake.calls[-1][1].label == "canary" and not fake.calls[-1][1].pinned
    assert client.get("/v1/model").json()["canary"] == {"label": "canary", "percent": 100.0}
