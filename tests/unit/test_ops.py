"""ops/: the container config, the Kubernetes manifests, the Prometheus rules and the Grafana
dashboard agree with each other and with the router (its config model, its metric names)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from router.core.config import RouterConfig, load_config, parse_config
from workers.main import ABORT_WAIT_SECONDS
from workers.relay_tasks import CANCEL_GRACE_SECONDS

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "dicom-router.json"
OVERLAYS = ("appliance", "scaled")
K8S_VERSION = "1.32.0"  # the schema kubernetes_validate checks against (kubectl v1.32)
METRIC_NAME = re.compile(r"dicom_router_[a-z_]+")
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
MONITORING_API = "monitoring.coreos.com/v1"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
CONFIG_MOUNT = "/etc/dicom-router/router.yaml"
ALERT_NAMES = {
    "DicomRouterDown", "DicomRouterNotReady", "DicomRouterDestinationFailing",
    "DicomRouterQueueGrowing", "DicomRouterDeadLetters", "DicomRouterSpoolNearFull",
    "DicomRouterSpoolInodesNearFull", "DicomRouterConfigReloadFailed",
    "DicomRouterAuditMessagesLost",
    "DicomRouterCertificateExpiring", "DicomRouterCommitmentResultsKept",
}

KUBECTL = shutil.which("kubectl")
PROMTOOL = shutil.which("promtool")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (scripts/install-test-deps.sh installs it)"
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian's prometheus package, scripts/install-test-deps.sh)",
)


# --- helpers -----------------------------------------------------------------------------------


@cache
def kustomize(overlay: str) -> tuple[tuple[dict[str, Any], ...], str]:
    """The overlay's rendered objects, and what kubectl wrote to stderr (warnings)."""
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(OPS / "kubernetes" / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d), done.stderr


def objects(overlay: str) -> tuple[dict[str, Any], ...]:
    return kustomize(overlay)[0]


def only(overlay: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects(overlay) if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def router_container(overlay: str) -> dict[str, Any]:
    containers = only(overlay, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["dicom-router"]
    return dict(containers[0])


def configmap_config(overlay: str) -> RouterConfig:
    """The router.yaml of the ConfigMap the StatefulSet mounts, validated by the router."""
    pod = only(overlay, "StatefulSet")["spec"]["template"]["spec"]
    mount = next(m for m in router_container(overlay)["volumeMounts"]
                 if m["mountPath"] == CONFIG_MOUNT)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = only(overlay, "ConfigMap", volume["configMap"]["name"])
    text = configmap["data"][mount.get("subPath", "router.yaml")]
    source = f"{overlay} ConfigMap {configmap['metadata']['name']}"
    return parse_config(yaml.safe_load(text), source)


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


def under(path: PurePosixPath, mount: str) -> bool:
    return path == PurePosixPath(mount) or PurePosixPath(mount) in path.parents


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def exported_metric_names(*, families: bool = False) -> set[str]:
    """Every series name /metrics can carry, from the metric objects of router.metrics; with
    `families`, also the metric names themselves (`dicom_router_forward_seconds`), which prose
    may name but a query cannot select."""
    from prometheus_client.metrics import MetricWrapperBase

    import router.core.metrics

    # prometheus_client strips "_total" from a counter's name and adds it back to the sample.
    # No "_created": the multiprocess collector the router serves /metrics with has none.
    suffixes = {
        "counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"), "info": ("_info",), "stateset": ("",),
        "enum": ("",), "unknown": ("",),
    }
    names: set[str] = set()
    for value in vars(router.core.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
                if families:
                    names.add(family.name)
    assert names, "router.core.metrics defines no prometheus_client metric"
    return names


def alert_groups() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    assert isinstance(groups, list)
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in alert_groups() for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # inside collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def missing_metrics(texts: list[str], *, families: bool = False) -> list[str]:
    exported = exported_metric_names(families=families)
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    return sorted(used - exported)


# --- the router's config files -----------------------------------------------------------------


def test_container_config_passes_router_validation() -> None:
    config = load_config(OPS / "container" / "router.yaml")
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 11112)
    # 127.0.0.1 would be unreachable from outside the container: no probe, no scrape.
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9100)
    assert config.spool.path == Path("/var/lib/dicom-router/spool")


def test_containerfile_matches_its_config() -> None:
    text = (OPS / "container" / "Containerfile").read_text(encoding="utf-8")
    config = load_config(OPS / "container" / "router.yaml")
    assert f'VOLUME ["{config.spool.path}"]' in text
    assert re.search(rf"^EXPOSE .*\b{config.listen.port}\b.*\b{config.metrics.port}\b", text, re.M)
    assert f"127.0.0.1:{config.metrics.port}/healthz" in text
    assert 'ENTRYPOINT ["dicom-router"]' in text
    assert f'CMD ["run", "--config", "{CONFIG_MOUNT}"]' in text
    assert re.search(r"^USER 10001", text, re.M), "the image must not run as root"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_config_passes_router_validation(overlay: str) -> None:
    config = configmap_config(overlay)
    assert config.metrics.host == "0.0.0.0", "the kubelet probes the metrics port from outside"
    assert router_container(overlay)["args"] == ["run", "--config", CONFIG_MOUNT]


# --- Kubernetes --------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_without_warnings(overlay: str) -> None:
    rendered, stderr = kustomize(overlay)
    assert not stderr.strip(), f"kubectl kustomize {overlay} warned:\n{stderr}"
    kinds = sorted(o["kind"] for o in rendered)
    for kind in ("ConfigMap", "PodDisruptionBudget", "StatefulSet", "Service"):
        assert kind in kinds, f"{overlay}: no {kind}"
    for obj in rendered:
        assert "namespace" not in obj["metadata"], "namespace-less: kubectl -n chooses it"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay: str) -> None:
    import kubernetes_validate

    for obj in objects(overlay):
        if obj["kind"] in CRD_KINDS:
            check_monitoring_crd(obj)  # no built-in schema for the Prometheus Operator's CRDs
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {exc.message} "
                        f"at {'.'.join(str(p) for p in exc.path)}")


def check_monitoring_crd(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == MONITORING_API
    assert obj["metadata"]["name"]
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert endpoint.get("port") or endpoint.get("targetPort")
            for key in ("interval", "scrapeTimeout"):
                assert key not in endpoint or DURATION.match(endpoint[key])
        return
    assert obj["kind"] == "PrometheusRule"
    assert spec["groups"]
    for group in spec["groups"]:
        assert isinstance(group["name"], str) and group["name"]
        assert group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert "for" not in rule or DURATION.match(rule["for"])
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in rule.get(key, {}).values())


@needs_kubectl
def test_monitoring_only_in_the_scaled_overlay() -> None:
    assert not [o for o in objects("appliance") if o["apiVersion"] == MONITORING_API]
    monitor = only("scaled", "ServiceMonitor")
    only("scaled", "PrometheusRule")
    # The ServiceMonitor selects exactly the metrics Service, by a port it has.
    services = [s for s in objects("scaled") if s["kind"] == "Service"
                and matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == ["dicom-router-metrics"]
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_http_on_the_metrics_port(overlay: str) -> None:
    container = router_container(overlay)
    config = configmap_config(overlay)
    assert port_number(container, "metrics") == config.metrics.port
    assert port_number(container, "dicom") == config.listen.port
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        spec = container[probe]
        # A TCP probe on the DICOM port would leak associations in pynetdicom.
        assert "tcpSocket" not in spec and "exec" not in spec and "grpc" not in spec, probe
        assert port_number(container, spec["httpGet"]["port"]) == config.metrics.port, probe
        paths[probe] = spec["httpGet"]["path"]
    assert paths["readinessProbe"] == "/readyz"
    assert paths["livenessProbe"] == "/healthz"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_spool_is_a_persistent_claim_at_the_config_spool_path(overlay: str) -> None:
    statefulset = only(overlay, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert "spool" in claims
    assert "spool" not in {v["name"] for v in pod["volumes"]}, "a pod volume would shadow it"
    mounts = {m["mountPath"]: m for m in router_container(overlay)["volumeMounts"]}
    spool = PurePosixPath(configmap_config(overlay).spool.path)
    assert str(spool) in mounts, f"nothing is mounted at the config's spool path {spool}"
    assert mounts[str(spool)]["name"] == "spool"
    assert not mounts[str(spool)].get("readOnly", False)


@needs_kubectl
def test_the_scaled_pods_mount_one_de_identification_key() -> None:
    """Each pod made its own key on its own spool: one study through two pods became two
    pseudonymous studies. The scaled overlay mounts one Secret for all, owner-read only."""
    pod = only("scaled", "StatefulSet")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "deid")
    assert volume["secret"]["secretName"] == "dicom-router-deid"
    assert volume["secret"]["defaultMode"] == 0o400
    mounts = {m["name"]: m for m in router_container("scaled")["volumeMounts"]}
    assert mounts["deid"]["mountPath"] == "/etc/dicom-router/deid" and mounts["deid"]["readOnly"]
    assert "/etc/dicom-router/deid/deid.key" in (OPS / "kubernetes" / "base" /
                                                 "router.yaml").read_text()


@needs_kubectl
def test_the_shared_state_component_mounts_one_read_write_many_claim_in_every_pod(
        tmp_path: Path) -> None:
    """Behind a load balancer a storage commitment's result or a modality's N-SET may reach
    another pod than the one that relayed the request (docs/scale-out.md): the component
    gives every pod of the scaled overlay one ReadWriteMany claim, writable, at the path
    base/router.yaml names for spool.shared_state_dir, and what it renders validates."""
    import kubernetes_validate

    kubernetes = os.path.relpath(OPS / "kubernetes", tmp_path)  # kustomize: no absolute
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{kubernetes}/overlays/scaled]\n"
        f"components: [{kubernetes}/components/shared-state]\n")
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    (claim,) = [o for o in rendered if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (statefulset,) = [o for o in rendered if o["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim"))
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert not mount.get("readOnly")
    line = f"# shared_state_dir: {mount['mountPath']}"
    assert line in (OPS / "kubernetes" / "base" / "router.yaml").read_text()
    for obj in rendered:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_read_only_root_has_writable_volumes_where_the_router_writes(overlay: str) -> None:
    pod = only(overlay, "StatefulSet")["spec"]["template"]["spec"]
    container = router_container(overlay)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["fsGroup"] == 10001
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    # The runtime dir (ZeroMQ sockets, metrics files) goes under TMPDIR: an emptyDir.
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    tmp = env.get("TMPDIR", "/tmp")
    tmp_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == tmp)
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp_mount["name"])
    config = configmap_config(overlay)
    paths = [PurePosixPath(config.spool.path)] + [
        PurePosixPath(d.path) for d in config.destinations.values() if d.type == "folder"
    ]
    if config.audit.enabled:
        paths.append(PurePosixPath(config.audit.path))
    for path in paths:
        assert any(under(path, mount) for mount in writable), f"{path} is on the read-only root"
    resources = container["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert resources["limits"] == {"cpu": "2", "memory": "2Gi"}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(overlay: str) -> None:
    pod = only(overlay, "StatefulSet")["spec"]["template"]["spec"]
    container = router_container(overlay)
    config = configmap_config(overlay)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    dimse_timeout = max([config.listen.dimse_timeout] + [
        d.dimse_timeout for d in config.destinations.values() if d.type == "dicom"
    ])
    # The preStop hook runs inside the grace period, before SIGTERM; then the acceptors
    # drain, then the workers give their delivery threads dimse_timeout (together), cancel
    # relays and wait for aborted associations (statefulset.yaml has the arithmetic).
    worker_tail = CANCEL_GRACE_SECONDS + 2 * ABORT_WAIT_SECONDS
    needed = float(pre_stop[1]) + config.drain_grace + dimse_timeout + worker_tail
    assert pod["terminationGracePeriodSeconds"] >= needed


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_disruption_budget(overlay: str) -> None:
    statefulset = only(overlay, "StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert matches(statefulset["spec"]["selector"]["matchLabels"], pod_labels)
    config = configmap_config(overlay)
    dicom = only(overlay, "Service", "dicom-router")["spec"]
    assert dicom.get("sessionAffinity", "None") == "None"
    assert [p["port"] for p in dicom["ports"]] == [config.listen.port]
    metrics = only(overlay, "Service", "dicom-router-metrics")["spec"]
    assert [p["port"] for p in metrics["ports"]] == [config.metrics.port]
    headless = only(overlay, "Service", statefulset["spec"]["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    for service in (dicom, metrics, headless):
        assert matches(service["selector"], pod_labels)
    pdb = only(overlay, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert matches(pdb["selector"]["matchLabels"], pod_labels)
    if overlay == "appliance":
        assert statefulset["spec"]["replicas"] == 1
        assert dicom["type"] in ("NodePort", "LoadBalancer")
    else:
        assert statefulset["spec"]["replicas"] == 3
        assert dicom["type"] == "LoadBalancer"
        assert dicom["externalTrafficPolicy"] == "Local"


# --- Prometheus --------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(ALERTS)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    done = subprocess.run([str(PROMTOOL), "test", "rules", "alerts_test.yml"],
                          cwd=OPS / "prometheus", capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_the_example_scrape_config() -> None:
    done = subprocess.run([str(PROMTOOL), "check", "config", "prometheus.yml"],
                          cwd=OPS / "prometheus", capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_are_complete() -> None:
    groups = alert_groups()
    assert [g["name"] for g in groups] == ["dicom-router"]
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERT_NAMES
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
    dead_letters = next(r for r in rules if r["alert"] == "DicomRouterDeadLetters")
    assert "dicom-router dead-letters list" in dead_letters["annotations"]["description"]


def test_alerts_use_only_metrics_the_router_exports() -> None:
    assert missing_metrics([r["expr"] for r in alert_rules()]) == []
    prose = [v for r in alert_rules() for v in r["annotations"].values()]
    assert missing_metrics(prose, families=True) == []


@needs_kubectl
def test_prometheus_rule_carries_the_same_groups_as_alerts_yml() -> None:
    rule = only("scaled", "PrometheusRule")
    assert rule["spec"]["groups"] == alert_groups(), (
        "ops/kubernetes/overlays/scaled/prometheusrule.yaml differs from ops/prometheus/"
        "alerts.yml: regenerate it (ops/README.md)"
    )


# --- Grafana -----------------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    data = dashboard()
    assert data["schemaVersion"] == 39
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert '$instance' in target["expr"], f"{panel['title']}: not filtered by instance"


def test_dashboard_covers_the_router() -> None:
    used = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    for name in (
        "dicom_router_associations_active", "dicom_router_associations_total",
        "dicom_router_instances_received_total", "dicom_router_received_bytes_total",
        "dicom_router_forwarded_bytes_total", "dicom_router_instances_forwarded_total",
        "dicom_router_forward_seconds_bucket", "dicom_router_queue_depth",
        "dicom_router_queue_oldest_seconds", "dicom_router_destination_up",
        "dicom_router_retries_total", "dicom_router_dead_letters_total",
        "dicom_router_refusals_total", "dicom_router_association_rejections_total",
        "dicom_router_receive_bytes_in_flight", "dicom_router_spool_free_bytes",
        "dicom_router_spool_size_bytes", "dicom_router_tls_handshake_failures_total",
        "dicom_router_connections_dropped_total", "dicom_router_process_restarts_total",
        "dicom_router_config_reloads_total", "dicom_router_build_info",
        "dicom_router_jobs_queued", "dicom_router_spool_free_inodes",
        "dicom_router_spool_errors_total", "dicom_router_dead_letters_unwritten",
        "dicom_router_tls_certificate_expiry_timestamp_seconds",
        "dicom_router_deid_burned_in_total",
    ):
        assert name in used, f"no dashboard panel shows {name}"


def test_dashboard_uses_only_metrics_the_router_exports() -> None:
    assert missing_metrics(dashboard_exprs()) == []
