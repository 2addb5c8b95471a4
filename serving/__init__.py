"""Model serving: production TF Serving files and the TF-Serving-compatible local model server."""
