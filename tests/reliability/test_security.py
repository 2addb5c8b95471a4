"""Security settings of the gateway, on a real process: API keys, rate limits, upload limits; and
no secrets in the repository.

The gateway here has keys, a small token bucket and small upload limits switched on through
its environment, as a deployment would (AIDETECT_GATEWAY_*), in front of the bad-input stack's
model server.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.gateway import images
from tests.gateway.processes import REPO_ROOT, START_TIMEOUT_SECONDS, free_port, gateway_process, wait_until
from tests.gateway.tiny_model_score import expected_score
from tests.reliability.stack import MEBIBYTE, Stack

KEYS = tuple(secrets.token_urlsafe(24) for _ in range(3))  # made per run: never a literal in the repo
MAX_UPLOAD_BYTES = 256 * 1024
MAX_PIXELS = 1_000_000
MAX_BATCH_FILES = 4
RATE_PER_MINUTE = 6
BURST = 3


@dataclass
class SecuredGateway:
    url: str
    log_path: Path


@pytest.fixture(scope="module")
def secured_gateway(
    production_like_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredGateway]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("secured") / "gateway.log"
    process = gateway_process(
        port,
        production_like_stack.model_server_address,
        log_path,
        api_keys=",".join(KEYS),
        rate_limit_per_minute=str(RATE_PER_MINUTE),
        rate_limit_burst=str(BURST),
        max_upload_bytes=str(MAX_UPLOAD_BYTES),
        max_pixels=str(MAX_PIXELS),
        max_batch_files=str(MAX_BATCH_FILES),
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), START_TIMEOUT_SECONDS, "secured gateway ready", log_path)
        yield SecuredGateway(url, log_path)
    finally:
        process.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def post(
    gateway: SecuredGateway, data: bytes, key: str | None, path: str = "/predict", **kwargs: object
) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    files = kwargs.pop("files", {"file": ("x.png", data, "image/png")})
    return httpx.post(f"{gateway.url}{path}", files=files, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]


def refusal(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]
    return str(body["error"])


@pytest.mark.integration
@pytest.mark.model
def test_api_keys_and_rate_limits_on_a_real_process(secured_gateway: SecuredGateway) -> None:
    """In order: refusals (no token spent), then the first key's bucket, then the second key's."""
    picture = images.solid(150)
    assert "missing API key" in refusal(post(secured_gateway, picture, None), 401)
    assert refusal(post(secured_gateway, picture, "x" * 32), 401) == "invalid API key"
    assert (
        refusal(post(secured_gateway, picture, KEYS[0][:-1]), 401) == "invalid API key"
    )  # a prefix is not a key
    refusal(httpx.get(f"{secured_gateway.url}/v1/model", timeout=30), 401)
    # A big body without a key is refused before it is read (no key, no upload).
    refusal(post(secured_gateway, b"\xff\xd8\xff" + bytes(8 * MEBIBYTE), None), 401)
    for path in ("/health", "/ready", "/metrics", "/"):  # probes, metrics and the page stay open
        assert httpx.get(f"{secured_gateway.url}{path}", timeout=30).status_code == 200, path

    answers = [post(secured_gateway, picture, KEYS[0]) for _ in range(BURST + 1)]
    assert [answer.status_code for answer in answers] == [200] * BURST + [429]
    assert answers[0].json()["score"] == pytest.approx(expected_score(picture), abs=1e-5)
    limited = answers[-1]
    assert "rate limit" in refusal(limited, 429)
    # A moving window of BURST requests per the time BURST take at the rate (gateway/security.py):
    # the wait is until the oldest request leaves it.
    assert 1 <= int(limited.headers["retry-after"]) <= BURST * 60 / RATE_PER_MINUTE + 1
    assert post(secured_gateway, picture, KEYS[1]).status_code == 200  # each key has its own bucket


@pytest.mark.integration
@pytest.mark.model
def test_upload_limits_on_a_real_process(secured_gateway: SecuredGateway) -> None:
    key = KEYS[2]  # a bucket of its own: BURST tokens, one per request below
    too_many_bytes = images.encode(images.gradient(600, 600), "BMP")  # ~1 MB
    too_many_pixels = images.encode(images.gradient(1200, 1000), "PNG")
    small = images.solid(60)
    batch = [("files", (f"{index}.png", small, "image/png")) for index in range(MAX_BATCH_FILES + 1)]
    big = post(secured_gateway, b"", key, files={"file": ("big.bmp", too_many_bytes, "image/bmp")})
    assert "limit" in refusal(big, 413)  # refused from Content-Length, before the body is read
    wide = post(secured_gateway, b"", key, files={"file": ("wide.png", too_many_pixels, "image/png")})
    assert "pixels" in refusal(wide, 413)
    many = post(secured_gateway, b"", key, path="/predict/batch", files=batch)
    assert f"at most {MAX_BATCH_FILES}" in refusal(many, 413)


@pytest.mark.integration
@pytest.mark.model
def test_keys_never_reach_the_logs(secured_gateway: SecuredGateway) -> None:
    """Runs after the requests above, which sent both keys and wrong ones."""
    log = secured_gateway.log_path.read_text(errors="replace")
    assert "request_id=" in log
    for key in KEYS:
        assert key not in log and key[:12] not in log


# ---------------------------------------------------------------- no secrets in the repository

SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "OpenAI-style key": re.compile(r"\bsk-[A-Za-z0-9]{32,}\b"),
    "password in a URL": re.compile(
        r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s:@'\"]{6,}@[^\s'\"]+", re.IGNORECASE
    ),
    "assigned API key": re.compile(
        r"(?i)\b(?:AIDETECT_GATEWAY_API_KEYS|api_keys?|secret|password|token)\b\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{20,}"
    ),
}
# A placeholder says so in its value (k8s/overlays/dev/gateway-secrets.env: "dev-only-key-not-a-secret").
PLACEHOLDER_MARKERS = ("not-a-secret", "placeholder", "example")
SECRET_FILE_NAMES = re.compile(r"(^|/)(\.env|id_rsa|id_ed25519|.*\.pem|.*\.key|.*\.p12|credentials\.json)$")


def repository_files() -> list[Path]:
    """Tracked files and the untracked ones not ignored: everything a commit could contain."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO_ROOT / name for name in listed.split("\0") if name]


def test_no_secrets_in_the_repository() -> None:
    found = []
    files = [path for path in repository_files() if path.is_file()]
    assert len(files) > 50
    for path in files:
        relative = path.relative_to(REPO_ROOT).as_posix()
        if SECRET_FILE_NAMES.search(relative):
            found.append(f"{relative}: a secret's file name")
            continue
        if path.stat().st_size > 2 * MEBIBYTE:
            continue  # data and images, not configuration
        text = path.read_bytes().decode("utf-8", errors="ignore")
        for kind, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                line = text[match.start() : text.find("\n", match.start())]
                if not any(marker in line for marker in PLACEHOLDER_MARKERS):
                    found.append(f"{relative}: {kind}: {match.group(0)[:40]}...")
    assert not found, "\n".join(found)


def test_the_secret_scanner_finds_what_it_looks_for() -> None:
    # Built at run time, so the repository never contains a string the scan must find.
    samples = {
        "private key": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
        "AWS access key": "AKIA" + "Z" * 16,
        "GitHub token": "ghp_" + "a1" * 18,
        "assigned API key": "AIDETECT_GATEWAY_API_KEYS=" + secrets.token_urlsafe(24),
        "password in a URL": "postgres://admin:" + "hunter2hunter2" + "@db.internal/app",
    }
    for kind, sample in samples.items():
        assert SECRET_PATTERNS[kind].search(sample), kind
    assert SECRET_FILE_NAMES.search("deploy/.env") and SECRET_FILE_NAMES.search("tls/server.key")
    assert not SECRET_FILE_NAMES.search(".env.example")


def test_the_env_example_sets_no_keys() -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    assert re.search(r"^AIDETECT_GATEWAY_API_KEYS=$", example, re.MULTILINE), "API keys must stay empty there"
