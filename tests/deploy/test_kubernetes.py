"""deploy/kubernetes, offline: every manifest against the Kubernetes API schemas (kubernetes-validate,
strict: unknown fields fail) and the ServiceMonitor against the Prometheus Operator's models; then
each manifest against the server it runs: env names and values parsed by tei-serve's own settings,
ports, probe paths, the SIGTERM drain against the grace period, the HPA's custom metric against
the adapter rule and the metric the server exports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

from tei_ort.engine import EngineStats
from tei_ort.serve.access import OPEN_GET_PATHS
from tei_ort.serve.app import GRACEFUL_SHUTDOWN_S
from tei_ort.serve.metrics import Metrics, ModelSeries
from tei_ort.serve.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
# The oldest and newest Kubernetes minor versions the manifests are checked against.
VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_KINDS = {"ServiceMonitor"}
# Seconds between the end of the drain and the kubelet's SIGKILL, for the interpreter to exit.
EXIT_MARGIN_S = 1


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _build(folder: Path) -> Iterator[dict[str, Any]]:
    """What `kubectl apply -k folder` applies: plain resources lists only (no patches here)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for entry in kustomization["resources"]:
        target = (folder / entry).resolve()
        yield from _build(target) if target.is_dir() else _documents(target)


def _overlay(name: str) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in _build(ROOT / name)}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_every_manifest_is_listed_by_a_kustomization() -> None:
    for folder in (ROOT / "common", *(ROOT / o for o in OVERLAYS)):
        listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert {e for e in listed if not e.startswith("..")} == present, folder
        for entry in listed:
            assert (folder / entry).exists(), f"{folder}: {entry}"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_match_the_kubernetes_schemas(overlay: str, version: str) -> None:
    kinds = []
    for doc in _build(ROOT / overlay):
        kinds.append(doc["kind"])
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    assert sorted(kinds) == sorted(
        ["Service", "ServiceMonitor", "HorizontalPodAutoscaler", "ConfigMap", "Deployment"]
    )


def test_a_typo_fails_the_schema_check() -> None:
    """The check above can fail: a misspelt probe field is refused."""
    deployment = _overlay("cpu")["Deployment"]
    probe = _container(deployment)["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_service_monitor_matches_the_prometheus_operator_model() -> None:
    doc = _overlay("cpu")["ServiceMonitor"]
    model = monitoring.ServiceMonitor.model_validate(doc)
    # The model ignores unknown fields: a round trip that loses one is a field it does not know.
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == doc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_server_accepts_the_deployments_settings(overlay: str) -> None:
    container = _container(_overlay(overlay)["Deployment"])
    env = _env(container)
    # tei-serve's own parser, on the manifest's arguments and environment: unknown flags or
    # values fail here as they would in the pod.
    settings = load_settings(container["args"], env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.port == ports["http"] == 8080
    assert settings.prometheus_port == ports["metrics"] == 9000
    assert settings.bind_host() == "0.0.0.0"
    assert settings.json_output
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.huggingface_hub_cache) in mounts
    if overlay == "gpu":
        assert settings.provider == "cuda"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    else:
        assert settings.intra_op_threads == int(container["resources"]["requests"]["cpu"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_the_drain_fit_the_server(overlay: str) -> None:
    deployment = _overlay(overlay)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[name]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/health", "http")
    assert "/health" in OPEN_GET_PATHS  # probes need no API key
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = int(command[1])
    # SIGTERM comes after preStop; tei-serve then drains for up to GRACEFUL_SHUTDOWN_S.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + GRACEFUL_SHUTDOWN_S + EXIT_MARGIN_S
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    # The image's non-root user (Dockerfile: useradd --uid 1000) owns the cache volume.
    dockerfile = (REPO / ("Dockerfile-cuda" if overlay == "gpu" else "Dockerfile")).read_text()
    uid = pod["securityContext"]["runAsUser"]
    assert f"--uid {uid} " in dockerfile and pod["securityContext"]["fsGroup"] == uid


def test_service_and_monitor_reach_the_pods() -> None:
    resources = _overlay("cpu")
    deployment, service = resources["Deployment"], resources["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in _container(deployment)["ports"]}
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    monitor = resources["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"


def _exposition() -> str:
    stats = EngineStats(
        queue_size=7,
        in_flight=0,
        batch_next_size=0,
        batch_next_tokens=0,
        batch_next_padded_tokens=0,
        batches_total=0,
        batch_failures_total=0,
        dropped_inputs_total=0,
        overloaded_total=0,
        is_healthy=True,
    )
    return Metrics([ModelSeries("m", lambda: stats, {}, 128)]).exposition().decode()


def test_hpa_scales_on_cpu_and_on_the_servers_queue_through_the_adapter_rule() -> None:
    resources = _overlay("cpu")
    hpa = resources["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == resources["Deployment"]["metadata"]["name"]
    by_type = {m["type"]: m for m in hpa["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    hpa_metric = by_type["Pods"]["pods"]["metric"]["name"]
    (rule,) = yaml.safe_load(resources["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == hpa_metric == "te_queue_size"
    assert rule["seriesQuery"].startswith(f"{hpa_metric}{{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    # The series exists, as a gauge, under that name on the server's /metrics.
    exposition = _exposition()
    assert f"# TYPE {hpa_metric} gauge" in exposition
    assert f'{hpa_metric}{{model="m"}} 7.0' in exposition.splitlines()
