"""Names of the Prometheus metrics that other parts read (load test, canary watch): defined once.

The gateway registers its metrics under GATEWAY_NAMESPACE with the short names below
(gateway/metrics.py); the local model server writes TF Serving's names (serving/metrics.py).
Readers import the full names from here instead of retyping them.
"""

GATEWAY_NAMESPACE = "aidetect_gateway"
# Short names, as gateway/metrics.py registers them (prometheus_client prefixes the namespace).
STAGE_SECONDS = "stage_seconds"
MODEL_REQUESTS = "model_requests"  # counter: exposed as ..._total
MODEL_REQUEST_SECONDS = "model_request_seconds"
CANARY_PERCENT = "canary_percent"

GATEWAY_STAGE_SECONDS = f"{GATEWAY_NAMESPACE}_{STAGE_SECONDS}"
GATEWAY_MODEL_REQUESTS = f"{GATEWAY_NAMESPACE}_{MODEL_REQUESTS}"
GATEWAY_MODEL_REQUEST_SECONDS = f"{GATEWAY_NAMESPACE}_{MODEL_REQUEST_SECONDS}"
GATEWAY_CANARY_PERCENT = f"{GATEWAY_NAMESPACE}_{CANARY_PERCENT}"

# TF Serving's Prometheus path (monitoring.config), and its metric names as its exporter writes them
# ('/' -> ':').
TF_SERVING_METRICS_PATH = "/monitoring/prometheus/metrics"
SERVER_REQUEST_COUNT = ":tensorflow:serving:request_count"
SERVER_REQUEST_LATENCY = ":tensorflow:serving:request_latency"
SERVER_RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"
SERVER_QUEUING_LATENCY = ":tensorflow:serving:batching_session:queuing_latency"
SERVER_INPUT_BATCH_SIZE = ":tensorflow:serving:batching_session:input_batch_size"
