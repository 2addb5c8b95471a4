"""Signature and tensor names of the exported SavedModel (ARCHITECTURE.md contract 2).

The one place these names are written in Python: the export writes them into the SavedModel
and the model card, clients read them from there (GetModelMetadata) or import them from here.
"""

SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "predict_image_bytes"
# Where the model looked (issue 16): the serving signature's outputs plus `heatmap`, on request only.
EXPLAIN_SIGNATURE = "explain_image"
OUTPUT_HEATMAP = "heatmap"
EXPLAIN_GRID = 8  # heatmap cells per side: float32 [N, 8, 8]
IMAGE_INPUT = "image"
BYTES_INPUT = "image_bytes"
OUTPUT_PROBABILITY = "probability"
OUTPUT_LOGIT = "logit"
OUTPUT_THRESHOLD = "threshold"
OUTPUT_LABEL = "label"
MODEL_CARD_FILE = "model_card.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
