"""Export stage: a training run -> a versioned TF Serving SavedModel in models/<name>/<version>/."""
