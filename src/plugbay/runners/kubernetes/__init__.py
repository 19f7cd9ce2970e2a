"""Plugins in Kubernetes pods: KubernetesRunner, its RBAC rules, the session sweep.

Imports: plugbay.errors, core.protocol, core.transport and plugbay.runners (base, session).
"""

from plugbay.runners.kubernetes.rbac import DISCOVERY_RBAC_RULES, RBAC_RULES, discovery_rbac_summary, rbac_summary
from plugbay.runners.kubernetes.options import ADDRESS_MODES
from plugbay.runners.kubernetes.runner import KubernetesRunner
from plugbay.runners.kubernetes.sweep import sweep

__all__ = ["ADDRESS_MODES", "DISCOVERY_RBAC_RULES", "RBAC_RULES", "KubernetesRunner", "discovery_rbac_summary",
           "rbac_summary", "sweep"]
