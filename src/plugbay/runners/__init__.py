"""Runners: where a plugin runs (process, Docker container, Kubernetes pod)."""
