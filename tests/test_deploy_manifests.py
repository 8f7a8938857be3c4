"""deploy/: Kubernetes manifests valid against Kubernetes' schemas and the Prometheus Operator CRDs (offline), and
the Prometheus configs accepted by promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.tools import tool

KUBERNETES = ROOT / "deploy" / "kubernetes"
# The Kubernetes release whose schemas the manifests must satisfy (kubernetes-validate ships them).
KUBERNETES_VERSION = "1.30.0"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document:
                found.append((f"{path.name}#{index}", document))
    return found


DOCUMENTS = _documents()
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "Probe"), ("monitoring.coreos.com/v1alpha1", "ScrapeConfig")}


def test_manifests_cover_the_deployment_and_operator_resources() -> None:
    kinds = {document["kind"] for _, document in DOCUMENTS}
    assert {"Deployment", "Service", "ConfigMap", "Probe", "ScrapeConfig"} <= kinds


@pytest.mark.parametrize(("where", "document"), [d for d in DOCUMENTS if (d[1]["apiVersion"], d[1]["kind"])
                                                  not in OPERATOR_KINDS])
def test_core_resources_match_the_kubernetes_schemas(where: str, document: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _unknown_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Keys of `given` that the model did not keep: fields the CRD does not define."""
    if isinstance(given, dict) and isinstance(kept, dict):
        problems = [f"{path}.{key}" for key in given if key not in kept]
        return problems + [p for key in given if key in kept for p in _unknown_fields(given[key], kept[key],
                                                                                        f"{path}.{key}")]
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (a, b) in enumerate(zip(given, kept, strict=False)) for p in _unknown_fields(a, b,
                                                                                                     f"{path}[{i}]")]
    return []


@pytest.mark.parametrize(("where", "document"), [d for d in DOCUMENTS if (d[1]["apiVersion"], d[1]["kind"])
                                                  in OPERATOR_KINDS])
def test_operator_resources_match_the_crd_schemas(where: str, document: dict[str, Any]) -> None:
    """Types and enums checked by models generated from the Prometheus Operator v0.80.1 CRDs; unknown fields
    (which the API server would prune) caught by comparing what the model kept with what was written."""
    from cloudcoil.models.prometheus_operator import v1, v1alpha1

    model: Any = {"Probe": v1.Probe, "ScrapeConfig": v1alpha1.ScrapeConfig}[document["kind"]]
    parsed = model.model_validate(document)
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert _unknown_fields(document["spec"], kept["spec"], "spec") == []


def test_configmap_holds_a_valid_mailmon_config(tmp_path: Path) -> None:
    from monitor.config import load_text

    configmap = next(d for _, d in DOCUMENTS if d["kind"] == "ConfigMap")
    (tmp_path / "password").write_text("secret-password")
    text = configmap["data"]["config.yaml"].replace("/etc/mailmon/secrets/imap-password", str(tmp_path / "password"))
    config = load_text(text, "configmap", {})
    assert set(config.modules) == {"smtp_relay", "imaps_login"}


def _prometheus_config(path: Path, tmp_path: Path) -> Path:
    """The example with its file paths pointed into tmp_path (promtool checks the rule files exist)."""
    text = path.read_text().replace("/etc/prometheus/rules/mailmon.rules.yml",
                                    str(ROOT / "prometheus" / "rules" / "mailmon.rules.yml"))
    copy = tmp_path / path.name
    copy.write_text(text)
    return copy


@pytest.mark.prometheus
@pytest.mark.parametrize("name", ["prometheus/probe.yml", "sharded/agent.yml", "sharded/central.yml"])
def test_prometheus_examples_pass_promtool(name: str, tmp_path: Path) -> None:
    promtool = tool("promtool", package="the Debian package prometheus")
    config = _prometheus_config(ROOT / "deploy" / name, tmp_path)
    args = [promtool, "check", "config", *(["--agent"] if "agent" in name else []), str(config)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
