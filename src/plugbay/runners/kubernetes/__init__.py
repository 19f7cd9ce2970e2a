"""Plugins in Kubernetes pods: KubernetesRunner, its RBAC rules, the session sweep.

Imports: plugbay.errors, core.protocol, core.transport and plugbay.runners (base, session).
"""

from plugbay.runners.kubernetes.rbac import RBAC_RULES, rbac_summary
from plugbay.runners.kubernetes.runner import ADDRESS_MODES, KubernetesRunner
from plugbay.runners.kubernetes.sweep import sweep

__all__ = ["ADDRESS_MODES", "RBAC_RULES", "KubernetesRunner", "rbac_summary", "sweep"]
