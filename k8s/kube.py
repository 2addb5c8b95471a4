"""The few kubectl calls a rollout on a cluster needs, each one a plain `kubectl` command line.

- Update a ConfigMap in place (`kubectl patch`): models.config for TF Serving, traffic.json for
  the gateways. A patch changes only that key, so the labels kustomize put on the object stay.
- Reach every TF Serving pod's gRPC port (`kubectl port-forward`, through the API server, which
  the NetworkPolicies do not govern), to wait for a version's state on each replica.
- Publish a version into the model volume through the model-publisher pod
  (k8s/tools/model-publisher.yaml): `kubectl cp` into a dot-folder, then `mv` (one rename).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common import model_versions
from k8s.errors import KubectlError, PublishError

PORT_FORWARD_LINE = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")
COMMAND_TIMEOUT_SECONDS = 120.0
COPY_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class Kubectl:
    namespace: str
    context: str | None = None
    binary: str = "kubectl"

    def command(self, *arguments: str) -> list[str]:
        executable = shutil.which(self.binary)
        if executable is None:
            raise KubectlError(f"{self.binary!r} not found on PATH (Debian/Ubuntu package: kubectl)")
        context = ["--context", self.context] if self.context else []
        return [executable, *context, "--namespace", self.namespace, *arguments]

    def run(self, *arguments: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
        command = self.command(*arguments)
        try:
            finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as error:
            raise KubectlError(f"{' '.join(command)} took over {timeout:g} s") from error
        if finished.returncode != 0:
            raise KubectlError(
                f"{' '.join(command)} failed: {finished.stderr.strip() or finished.stdout.strip()}"
            )
        return finished.stdout

    def patch_configmap(self, name: str, key: str, text: str) -> None:
        self.run("patch", "configmap", name, "--type", "merge", "--patch", json.dumps({"data": {key: text}}))

    def ready_pods(self, selector: str) -> list[str]:
        answer = json.loads(self.run("get", "pods", "--selector", selector, "--output", "json"))
        names = [
            pod["metadata"]["name"]
            for pod in answer.get("items", [])
            if pod.get("status", {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")
        ]
        if not names:
            raise KubectlError(f"no running pod matches {selector!r} in namespace {self.namespace!r}")
        return sorted(names)

    @contextlib.contextmanager
    def port_forwards(self, pods: Sequence[str], remote_port: int) -> Iterator[list[str]]:
        """Local addresses ("127.0.0.1:PORT") forwarding to `remote_port` of each pod."""
        processes: list[subprocess.Popen[str]] = []
        try:
            addresses = []
            for pod in pods:
                process = subprocess.Popen(
                    self.command("port-forward", f"pod/{pod}", f":{remote_port}", "--address", "127.0.0.1"),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                processes.append(process)
                line = process.stdout.readline() if process.stdout else ""
                match = PORT_FORWARD_LINE.search(line)
                if match is None:
                    error = process.stderr.read() if process.stderr else ""
                    raise KubectlError(f"port-forward to {pod} failed: {line.strip()} {error.strip()}")
                addresses.append(f"127.0.0.1:{match.group(1)}")
            yield addresses
        finally:
            for process in processes:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()

    def publish(self, export_directory: Path, pod: str, model_directory: str) -> int:
        """Copy an exported version into the volume as the next version number; returns it."""
        listing = self.run("exec", pod, "--", "ls", "-1", model_directory)
        versions = [int(name) for name in listing.split() if model_versions.is_version_name(name)]
        version = max(versions, default=0) + 1
        final = PurePosixPath(model_directory) / str(version)
        temporary = PurePosixPath(model_directory) / f".publish-{version}"
        self.run("exec", pod, "--", "rm", "-rf", str(temporary))
        self.run("cp", str(export_directory), f"{pod}:{temporary}", timeout=COPY_TIMEOUT_SECONDS)
        # One rename, and only onto a free name: `mv` onto an existing folder would move the
        # copy *into* it, and a version is never overwritten.
        self.run("exec", pod, "--", "sh", "-c", 'test ! -e "$1" && mv "$0" "$1"', str(temporary), str(final))
        check = self.run("exec", pod, "--", "ls", "-1", str(final))
        if "saved_model.pb" not in check.split():
            raise PublishError(f"{final} in pod {pod} has no saved_model.pb after the copy: {check.strip()}")
        return version
