"""`python -m gateway`: serve the gateway with uvicorn, settings from AIDETECT_GATEWAY_* variables.

Every setting is also a command-line option (`python -m gateway --help`), which overrides the
environment (handy for tests and `make run`).
"""

from __future__ import annotations

import importlib.util
import sys
import types


def use_tensorflow_protos_only() -> bool:
    """Let `tensorflow.core.*_pb2` import without running TensorFlow's own `__init__`.

    TF Serving's protos live in the tensorflow package, and importing any of them normally loads
    all of TensorFlow: ~8 s and ~650 MB for a process that only needs message classes. Registering
    the package as a bare namespace (its real path, no `__init__` run) makes the gateway start in
    well under a second at ~100 MB. Only for this entry point: a process that also needs TensorFlow
    itself (tests building models) imports it normally, and then this does nothing.
    """
    if "tensorflow" in sys.modules:
        return False
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return False
    package = types.ModuleType("tensorflow", "TensorFlow's protos only (see gateway/__main__.py)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["tensorflow"] = package
    return True


def main(argv: list[str] | None = None) -> None:
    use_tensorflow_protos_only()
    # Imported here, after the line above: they import the protos.
    import uvicorn
    from pydantic_settings import CliApp

    from common.logs import configure_logging
    from gateway.main import create_app
    from gateway.server import with_head_timeout
    from gateway.settings import Settings

    # Every setting is also an option (--model-server-address, --port, ...; `--help` lists them),
    # which overrides its AIDETECT_GATEWAY_* variable: pydantic-settings' own command-line source.
    settings = CliApp.run(Settings, cli_args=argv)
    configure_logging(settings.log_level)
    # uvicorn's access log is replaced by the gateway's own line (with request id and stage timings).
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For: the app's own middleware, from trusted proxies only
        server_header=False,
        # h11, not httptools: httptools cannot bound the request head (issue 13: 256 MiB of headers
        # were read and answered 200); with a deadline for each request head (gateway/server.py).
        http=with_head_timeout(settings.request_head_timeout_seconds),
        h11_max_incomplete_event_size=settings.max_request_head_bytes,
        limit_concurrency=settings.limit_concurrency,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )


if __name__ == "__main__":
    main()
