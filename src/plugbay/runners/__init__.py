"""Runners: where a plugin runs (process, Docker container, Kubernetes pod).

Imports: plugbay.errors, core.protocol and core.transport only; the host side imports runners.base.
"""
