"""Kubernetes manifests (kustomize base + overlays) and the model-version rollout CLI (k8s.rollout)."""
