"""The Kubernetes manifests: both overlays build, validate offline, pass the policy scan, and say
what the issue asks (probes on the model state, locked-down pods, only the gateway reaching TF
Serving, alerts on metrics that exist).

Rendering uses the machine's `kubectl kustomize` (kubectl ships kustomize); the Kubernetes schemas
come from the `kubernetes-validate` package (offline); the policy scan is checkov from its own
virtualenv (.venv-tools, made by `make tools`: checkov pins versions that conflict with .venv's).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.k8s.manifests_support import K8S, OVERLAYS, REPO_ROOT, container, find, render
from tests.k8s.prometheus_operator_schemas import SCHEMAS as CUSTOM_RESOURCE_SCHEMAS

SERVING = REPO_ROOT / "serving"
PUBLISHER_POD = K8S / "tools" / "model-publisher.yaml"
CHECKOV = REPO_ROOT / ".venv-tools" / "bin" / "checkov"
# The oldest Kubernetes these manifests are for (native gRPC probes are GA since 1.27) and the
# newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
WORKLOAD_KINDS = {"Deployment", "Pod"}


@pytest.fixture(scope="module")
def rendered_text() -> dict[str, str]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {
        overlay: [document for document in yaml.safe_load_all(text) if document]
        for overlay, text in rendered_text.items()
    }


def find_prefixed(objects: list[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    matches = [
        candidate
        for candidate in objects
        if candidate["kind"] == kind and candidate["metadata"]["name"].startswith(prefix)
    ]
    assert len(matches) == 1, f"expected one {kind} named {prefix}*, found {len(matches)}"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for candidate in objects:
        if candidate["kind"] == "Deployment":
            yield candidate["metadata"]["name"], candidate["spec"]["template"]["spec"]
        elif candidate["kind"] == "Pod":
            yield candidate["metadata"]["name"], candidate["spec"]


def publisher_pod() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(PUBLISHER_POD.read_text())
    return document


# -- build and validate -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_the_whole_stack(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    kinds = {(item["kind"], item["metadata"]["name"]) for item in rendered[overlay]}
    for expected in [
        ("Namespace", "aidetect"),
        ("Deployment", "tf-serving"),
        ("Service", "tf-serving"),
        ("PodDisruptionBudget", "tf-serving"),
        ("PersistentVolumeClaim", "models"),
        ("ConfigMap", "tf-serving-models"),
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("Ingress", "gateway"),
        ("ConfigMap", "gateway-traffic"),
        ("NetworkPolicy", "default-deny"),
        ("NetworkPolicy", "tf-serving"),
        ("NetworkPolicy", "gateway"),
        ("ServiceMonitor", "gateway"),
        ("ServiceMonitor", "tf-serving"),
        ("PrometheusRule", "aidetect"),
    ]:
        assert expected in kinds, f"{overlay} lacks {expected}"
    for item in rendered[overlay]:
        if item["kind"] != "Namespace":
            assert item["metadata"].get("namespace") == "aidetect", (
                f"{item['kind']}/{item['metadata']['name']}"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Strict (unknown fields refused), for the oldest and newest Kubernetes targeted; the two
    Prometheus Operator kinds, which have no schema there, against their own (next test)."""
    problems = []
    for item in [*rendered[overlay], publisher_pod()]:
        if (item["apiVersion"], item["kind"]) in CUSTOM_RESOURCE_SCHEMAS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{item['kind']}/{item['metadata']['name']} (k8s {version}): {error.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(
                    f"{item['kind']} {item['apiVersion']}: no schema, and not a known custom resource"
                )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_crd_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    checked = 0
    for item in rendered[overlay]:
        schema = CUSTOM_RESOURCE_SCHEMAS.get((item["apiVersion"], item["kind"]))
        if schema is not None:
            jsonschema.validate(item, schema)
            checked += 1
    assert checked == 3  # two ServiceMonitors and the PrometheusRule


def test_the_custom_resource_schemas_refuse_a_misspelt_field() -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "gateway"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "endpoints": [{"port": "http", "intervall": "15s"}],
        },
    }
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(monitor, CUSTOM_RESOURCE_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])


# -- policy scan ------------------------------------------------------------------------------


def run_checkov(files: list[Path]) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(
            f"checkov not found at {CHECKOV}: run `make tools` (it installs checkov into .venv-tools; "
            "`make test` does it first)",
            pytrace=False,
        )
    arguments = [str(CHECKOV), "--framework", "kubernetes", "--output", "json", "--skip-download"]
    for path in files:
        arguments += ["--file", str(path)]
    # BC_SKIP_MAPPING: no call home for the check-to-guideline mapping (the scan stays offline).
    environment = {"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin", "HOME": str(files[0].parent)}
    finished = subprocess.run(
        arguments, capture_output=True, text=True, timeout=300, check=False, env=environment
    )
    assert finished.stdout.strip(), f"checkov printed nothing:\n{finished.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(finished.stdout)
    return report


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_passes_with_every_skip_justified(
    rendered_text: dict[str, str], overlay: str, tmp_path: Path
) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text[overlay])
    report = run_checkov([manifest, PUBLISHER_POD])
    results = report["results"]
    failed = [
        f"{check['check_id']} {check['check_name']} on {check['resource']}"
        for check in results["failed_checks"]
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    assert report["summary"]["passed"] > 150
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"


def test_every_skip_annotation_has_a_comment_explaining_it() -> None:
    sources = [*K8S.rglob("*.yaml")]
    annotated = 0
    for path in sources:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "checkov.io/skip" not in line:
                continue
            annotated += 1
            assert re.search(r"checkov\.io/skip\d+: CKV\w+=\S.{20,}", line), f"{path}:{number + 1}: no reason"
            above = lines[number - 1].strip()
            assert above.startswith("#"), f"{path}:{number + 1}: no comment line right above the skip"
    assert annotated >= 3


# -- what the manifests must say --------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_by_tag(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for name, spec in [*pod_specs(rendered[overlay]), ("model-publisher", publisher_pod()["spec"])]:
        for item in spec["containers"]:
            image = item["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}: image {image} is not pinned"
            assert item["imagePullPolicy"] == "Always"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down_with_limits(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for name, spec in [*pod_specs(rendered[overlay]), ("model-publisher", publisher_pod()["spec"])]:
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] >= 10000, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for item in spec["containers"]:
            security = item["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(item["resources"][bound]), f"{name} {bound}"


def test_dev_is_cpu_and_one_replica_each(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["dev"]
    serving = find(objects, "Deployment", "tf-serving")
    assert serving["spec"]["replicas"] == 1
    assert container(objects, "tf-serving")["image"] == "tensorflow/serving:2.21.0"
    assert "nvidia.com/gpu" not in container(objects, "tf-serving")["resources"]["limits"]
    # No autoscaler: the gateway Deployment's own default of one replica holds.
    assert not [item for item in objects if item["kind"] == "HorizontalPodAutoscaler"]
    assert "replicas" not in find(objects, "Deployment", "gateway")["spec"]


def test_prod_is_gpu_with_several_gateways(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["prod"]
    serving = find(objects, "Deployment", "tf-serving")
    spec = serving["spec"]["template"]["spec"]
    tf_serving = container(objects, "tf-serving")
    assert tf_serving["image"] == "tensorflow/serving:2.21.0-gpu"
    assert tf_serving["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert tf_serving["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert serving["spec"]["replicas"] >= 2
    autoscaler = find(objects, "HorizontalPodAutoscaler", "gateway")
    assert autoscaler["spec"]["minReplicas"] >= 3
    assert autoscaler["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert find(objects, "Ingress", "gateway")["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]


@pytest.mark.parametrize(
    ("overlay", "batching_file"),
    [("dev", "batching.cpu.config"), ("prod", "batching.config"), ("cpu-bf16", "batching.cpu.config")],
)
def test_tf_serving_config_maps_are_the_files_in_serving(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, batching_file: str
) -> None:
    objects = rendered[overlay]
    models = find(objects, "ConfigMap", "tf-serving-models")
    assert models["data"]["models.config"] == (SERVING / "models.config").read_text()
    settings = find_prefixed(objects, "ConfigMap", "tf-serving-config-")
    assert settings["data"]["batching.config"] == (SERVING / batching_file).read_text()
    assert settings["data"]["monitoring.config"] == (SERVING / "monitoring.config").read_text()
    volumes = {
        volume["name"]: volume
        for volume in find(objects, "Deployment", "tf-serving")["spec"]["template"]["spec"]["volumes"]
    }
    # models.config keeps its name (edited in place by the rollout); the other configs' hashed
    # name rolls the pods when they change.
    assert volumes["models-config"]["configMap"]["name"] == "tf-serving-models"
    assert volumes["server-config"]["configMap"]["name"] == settings["metadata"]["name"]
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mixed_precision_only_on_nodes_that_compute_in_bfloat16(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The session config (serving/session_config.cpu.pbtxt) is used by the cpu-bf16 overlay alone,
    whose pods only run on nodes labelled with AVX512-BF16 or AMX; dev and prod run fp32."""
    objects = rendered[overlay]
    tf_serving = container(objects, "tf-serving")
    flags = dict(argument.removeprefix("--").split("=", 1) for argument in tf_serving["args"])
    settings = find_prefixed(objects, "ConfigMap", "tf-serving-config-")
    pod = find(objects, "Deployment", "tf-serving")["spec"]["template"]["spec"]
    if overlay != "cpu-bf16":
        assert "tensorflow_session_config_file" not in flags and "session.config" not in settings["data"]
        return
    mounts = {mount["name"]: mount["mountPath"] for mount in tf_serving["volumeMounts"]}
    assert flags["tensorflow_session_config_file"] == f"{mounts['server-config']}/session.config"
    assert settings["data"]["session.config"] == (SERVING / "session_config.cpu.pbtxt").read_text()
    required = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms = required["nodeSelectorTerms"]
    assert sorted(term["matchExpressions"][0]["key"] for term in terms) == [
        "feature.node.kubernetes.io/cpu-cpuid.AMXBF16",
        "feature.node.kubernetes.io/cpu-cpuid.AVX512BF16",
    ]
    assert all(term["matchExpressions"][0]["values"] == ["true"] for term in terms)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tf_serving_flags_exist_in_the_pinned_tf_serving(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    known = {
        line.strip()
        for line in (REPO_ROOT / "serving" / "tf_serving_flags.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    tf_serving = container(rendered[overlay], "tf-serving")
    assert tf_serving["command"] == ["/usr/bin/tensorflow_model_server"]
    flags = dict(argument.removeprefix("--").split("=", 1) for argument in tf_serving["args"])
    assert set(flags) <= known, f"unknown flags: {set(flags) - known}"
    mounts = {mount["name"]: mount["mountPath"] for mount in tf_serving["volumeMounts"]}
    assert flags["model_config_file"] == f"{mounts['models-config']}/models.config"
    assert flags["batching_parameters_file"] == f"{mounts['server-config']}/batching.config"
    assert flags["monitoring_config_file"] == f"{mounts['server-config']}/monitoring.config"
    assert flags["enable_grpc_healthcheck_service"] == "true"
    base_path = re.search(r'base_path: "([^"]+)"', (SERVING / "models.config").read_text())
    assert base_path is not None and base_path.group(1).startswith(mounts["models"] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_check_the_model_state_and_liveness_is_separate(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    tf_serving = container(rendered[overlay], "tf-serving")
    for probe in ("startupProbe", "readinessProbe"):
        command = tf_serving[probe]["exec"]["command"]
        assert command[:2] == ["/bin/bash", "-c"]
        assert "/v1/models/%s/labels/%s" in command[2] and "AVAILABLE" in command[2]
    assert tf_serving["livenessProbe"] == {
        "grpc": {"port": 8500},
        "periodSeconds": 20,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    environment = {variable["name"]: variable["value"] for variable in tf_serving["env"]}
    assert {"MODEL_NAME": "ai_detector", "READY_LABEL": "stable"}.items() <= environment.items()
    gateway = container(rendered[overlay], "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    for deployment in ("tf-serving", "gateway"):
        spec = find(rendered[overlay], "Deployment", deployment)["spec"]
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        pause = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["terminationGracePeriodSeconds"] > pause


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_tf_serving(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    deny = find(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    policy = find(objects, "NetworkPolicy", "tf-serving")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "tf-serving"}}
    rules = {
        json.dumps(rule["from"], sort_keys=True): sorted(port["port"] for port in rule["ports"])
        for rule in policy["ingress"]
    }
    gateway_pods = json.dumps(
        [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}], sort_keys=True
    )
    # Both only through the API filter sidecar (tests/k8s/test_api_filter.py), never TF Serving's
    # own ports, which answer the control plane (HandleReloadConfigRequest) too.
    assert rules.pop(gateway_pods) == [8510]
    # What is left: Prometheus, on the filter's metrics port only.
    ((peers, ports),) = rules.items()
    assert "prometheus" in peers and ports == [8511]
    assert "egress" not in policy  # TF Serving opens no connection (default-deny egress)
    services = [
        item for item in objects if item["kind"] == "Service" and item["metadata"]["name"] == "tf-serving"
    ]
    assert services[0]["spec"].get("type", "ClusterIP") == "ClusterIP"
    filter_ports = {
        port["name"]: port["containerPort"]
        for port in container(objects, "tf-serving", "api-filter")["ports"]
    }
    assert filter_ports == {"grpc-filtered": 8510, "metrics": 8511}
    assert sorted(port["targetPort"] for port in services[0]["spec"]["ports"]) == ["grpc-filtered", "metrics"]
    # Issue 14: the gateways balance each Predict over every pod (headless Service, round_robin).
    headless = find(objects, "Service", "tf-serving-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["ports"][0]["targetPort"] == "grpc-filtered"
    (settings,) = [
        item["data"]
        for item in objects
        if item["kind"] == "ConfigMap" and item["metadata"]["name"].startswith("gateway-settings")
    ]
    assert settings["AIDETECT_GATEWAY_MODEL_SERVER_ADDRESS"].startswith("dns:///tf-serving-headless.")
    assert settings["AIDETECT_GATEWAY_MODEL_SERVER_ADDRESS"].endswith(":8510")
    assert settings["AIDETECT_GATEWAY_MODEL_SERVER_LOAD_BALANCING"] == "round_robin"
    # The model card in production: the gateway reads it from the models volume, read-only.
    assert settings["AIDETECT_GATEWAY_MODEL_CARD_DIRECTORY"] == "/models/ai_detector"
    gateway_pod = find(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    claims = {volume["name"]: volume.get("persistentVolumeClaim") for volume in gateway_pod["volumes"]}
    assert claims["models"] == {"claimName": "models", "readOnly": True}
    mounts = {mount["name"]: mount for mount in container(objects, "gateway")["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    # Rate limits shared by the replicas in the Redis only the gateways reach.
    assert settings["AIDETECT_GATEWAY_RATE_LIMIT_STORAGE_URL"] == "redis://redis:6379/0"
    assert find(objects, "Service", "redis")["spec"]["ports"][0]["port"] == 6379
    (redis_rule,) = find(objects, "NetworkPolicy", "redis")["spec"]["ingress"]
    assert redis_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}]
    gateway_egress = find(objects, "NetworkPolicy", "gateway")["spec"]["egress"]
    assert [8510] in [sorted(port["port"] for port in rule["ports"]) for rule in gateway_egress]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_serves_https(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    ingress = find(rendered[overlay], "Ingress", "gateway")
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and tls["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    # Issue 13: /metrics, /ready (two gRPC calls per hit, unlimited) and /health are not published.
    (rule,) = ingress["spec"]["rules"]
    published = {(path["path"], path["pathType"]) for path in rule["http"]["paths"]}
    assert published == {
        ("/", "Exact"),
        ("/static", "Prefix"),
        ("/predict", "Exact"),
        ("/predict/batch", "Exact"),
        ("/v1/model", "Exact"),
        ("/docs", "Exact"),
        ("/docs-assets", "Prefix"),
        ("/openapi.json", "Exact"),
    }


# -- observability ----------------------------------------------------------------------------


def gateway_metric_names() -> set[str]:
    from gateway.metrics import GatewayMetrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in GatewayMetrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def tf_serving_metric_names() -> set[str]:
    from serving.metrics import ServerMetrics

    names = set()
    for metric in vars(ServerMetrics()).values():
        if not hasattr(metric, "render"):
            continue
        _, _, name, kind = metric.render()[0].split(" ")  # "# TYPE <name> <kind>"
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
    return names


# kube-state-metrics: the one place that knows whether TF Serving pods are Ready (= stable AVAILABLE).
KUBE_STATE_METRICS = {"kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"}
PROMQL_FUNCTIONS = {"sum", "rate", "increase", "histogram_quantile", "absent", "by", "or", "and", "le"}


def metric_names_in(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_strings = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_strings)
    without_label_sets = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_label_sets)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {token for token in tokens if token not in PROMQL_FUNCTIONS and not token.startswith("$")}


def test_alerts_and_dashboard_use_metrics_that_exist(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["prod"]
    rule_groups = find(objects, "PrometheusRule", "aidetect")["spec"]["groups"]
    rules = [rule for group in rule_groups for rule in group["rules"]]
    recorded = {rule["record"] for rule in rules if "record" in rule}
    known = gateway_metric_names() | tf_serving_metric_names() | KUBE_STATE_METRICS | recorded
    dashboard = json.loads(
        find_prefixed(objects, "ConfigMap", "aidetect-grafana-dashboard-")["data"]["aidetect.json"]
    )
    expressions = [rule["expr"] for rule in rules] + [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]
    unknown = {name for expression in expressions for name in metric_names_in(expression)} - known
    assert not unknown, f"metric names used but not exported by anything: {sorted(unknown)}"
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert {"AidetectLatencyP95High", "AidetectErrorRatioHigh", "AidetectModelNotAvailable"} <= set(alerts)
    assert alerts["AidetectLatencyP95High"]["expr"].endswith("> 0.2")


def test_dashboard_reaches_grafana(rendered: dict[str, list[dict[str, Any]]]) -> None:
    config_map = find_prefixed(rendered["prod"], "ConfigMap", "aidetect-grafana-dashboard-")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["aidetect.json"])
    assert dashboard["uid"] == "aidetect" and len(dashboard["panels"]) >= 8
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_service_monitors_scrape_the_real_metrics_paths(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["prod"]
    monitoring = (SERVING / "monitoring.config").read_text()
    tf_serving_path = re.search(r'path: "([^"]+)"', monitoring)
    assert tf_serving_path is not None
    (endpoint,) = find(objects, "ServiceMonitor", "tf-serving")["spec"]["endpoints"]
    assert endpoint == {**endpoint, "port": "metrics", "path": tf_serving_path.group(1)}
    # The API filter publishes exactly that path.
    api_filter = (K8S / "base" / "tf-serving" / "api-filter.conf").read_text()
    assert f"location = {tf_serving_path.group(1)} {{" in api_filter
    (endpoint,) = find(objects, "ServiceMonitor", "gateway")["spec"]["endpoints"]
    assert endpoint == {**endpoint, "port": "http", "path": "/metrics"}
