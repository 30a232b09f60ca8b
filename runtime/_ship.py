"""What the package ships besides its code: the dashboard, the rules, the kustomize base.

A leaf with no imports: ``setup.py`` reads it (``runpy``) to copy these files into the
wheel under ``runtime/_shipped/`` (same relative paths), and ``runtime.export`` writes
them out (``python -m runtime export dashboards|rules|kubernetes DIR``).  Paths are
relative to the repository's root.
"""

from __future__ import annotations

__all__ = ["PACKAGE_DIR", "SHIPPED"]

#: Where the files are inside the installed package.
PACKAGE_DIR = "_shipped"

#: What ``export KIND`` writes, by kind.
SHIPPED: dict[str, tuple[str, ...]] = {
    "dashboards": ("dashboards/socketserver-overview.json",),
    "rules": ("deploy/prometheus/rules.yml", "deploy/prometheus/rules_test.yml"),
    "kubernetes": (
        "deploy/kubernetes/kustomization.yaml",
        "deploy/kubernetes/configmap.yaml",
        "deploy/kubernetes/deployment.yaml",
        "deploy/kubernetes/service.yaml",
        "deploy/kubernetes/hpa.yaml",
        "deploy/kubernetes/pdb.yaml",
        "deploy/kubernetes/servicemonitor.yaml",
        "deploy/kubernetes/prometheusrule.yaml",
    ),
}
