"""deploy/k8s: the manifests parse, validate against the Kubernetes API schemas (when the
kubernetes-validate package is installed), and carry the probes, resources, termination grace
period, Services, autoscaler and scrape configuration the server needs."""

import copy

import pytest

from service.config import ServerConfig
from tests.deploy.deploy_helpers import K8S, load_yaml, load_yaml_documents, parse_dockerfile

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # grpc probes are GA since 1.27


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_documents(path):
            name = doc["metadata"].get("name") or doc["metadata"]["generateName"]
            found[(doc["kind"], name)] = doc
    return found


@pytest.fixture(scope="module")
def deployment(manifests):
    return manifests[("Deployment", "protolm")]


@pytest.fixture(scope="module")
def container(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_value(container, name, default=None):
    for entry in container.get("env", []):
        if entry["name"] == name:
            return entry.get("value", entry.get("valueFrom"))
    return default


def strategic_merge(base, patch):
    """Enough of kubectl's strategic merge patch for the GPU overlay: maps merge, lists of named
    items (containers, env) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base + patch):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            match = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if match is None:
                out.append(item)
            else:
                out[match] = strategic_merge(out[match], item)
        return out
    return patch


def test_kustomization_lists_existing_files_and_the_gpu_overlay_patches_the_deployment(manifests):
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    kinds = {kind for path in kustomization["resources"] for kind in (d["kind"] for d in load_yaml_documents(K8S / path))}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget"} <= kinds
    gpu = load_yaml(K8S / "gpu" / "kustomization.yaml")
    assert gpu["resources"] == [".."]
    (patch_ref,) = gpu["patches"]
    patch = load_yaml(K8S / "gpu" / patch_ref["path"])
    assert (patch["kind"], patch["metadata"]["name"]) in manifests


def test_manifests_validate_against_the_kubernetes_schemas(manifests):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extra has it)")
    for (kind, name), doc in manifests.items():
        if kind == "ServiceMonitor":
            continue  # a CRD of the Prometheus Operator: checked field by field below
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    # the GPU overlay, applied to the base Deployment
    patch = load_yaml(K8S / "gpu" / "deployment-gpu.yaml")
    merged = strategic_merge(manifests[("Deployment", "protolm")], patch)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(merged, version, strict=True)


def test_probes_ask_the_grpc_health_service_on_the_image_port(container):
    image_env = parse_dockerfile().stage("serve").env()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(image_env["PROTOLM_PORT"]), "metrics": int(image_env["PROTOLM_METRICS_PORT"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": ports["grpc"]}, probe  # service "": the whole server
    # loading and warming a bundle must fit in the startup probe's budget
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_resources_are_requested_and_threads_follow_the_cpu_request(container):
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    threads = env_value(container, "PROTOLM_INTRA_OP_THREADS")
    assert threads["resourceFieldRef"]["resource"] == "requests.cpu"


def test_termination_grace_covers_pre_stop_and_the_servers_drain(deployment, container):
    drain = float(env_value(container, "PROTOLM_DRAIN_SECONDS", ServerConfig().drain_seconds))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + drain + 1
    strategy = deployment["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_bundle_comes_read_only_from_a_volume(deployment, container, manifests):
    bundle_dir = env_value(container, "PROTOLM_BUNDLE_DIR")
    (mount,) = [m for m in container["volumeMounts"] if bundle_dir.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in manifests
    # the training Job writes to the same claim
    (job,) = [d for (kind, _), d in manifests.items() if kind == "Job"]
    (job_volume,) = job["spec"]["template"]["spec"]["volumes"]
    assert job_volume["persistentVolumeClaim"]["claimName"] == claim
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(parse_dockerfile().global_args["PROTOLM_UID"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_services_suit_grpc_balancing(manifests, deployment):
    selector = deployment["spec"]["selector"]["matchLabels"]
    headless = manifests[("Service", "protolm-headless")]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == selector
    assert [p["appProtocol"] for p in headless["spec"]["ports"]] == ["grpc"]
    cluster = manifests[("Service", "protolm")]
    assert cluster["spec"]["selector"] == selector
    assert {p["name"] for p in cluster["spec"]["ports"]} == {"grpc", "metrics"}


def test_autoscaler_targets_the_deployment(manifests):
    hpa = manifests[("HorizontalPodAutoscaler", "protolm")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "protolm"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in manifests[("Deployment", "protolm")]["spec"]  # the autoscaler owns it


def test_metrics_are_scraped_by_service_monitor_or_annotations(manifests, deployment, container):
    metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(metrics_port)
    monitor = manifests[("ServiceMonitor", "protolm")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [doc for (kind, _), doc in manifests.items() if kind == "Service"
                and all(doc["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
    assert [s["metadata"]["name"] for s in selected] == ["protolm"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_gpu_overlay_adds_a_gpu_limit_and_the_gpu_device(manifests):
    patch = load_yaml(K8S / "gpu" / "deployment-gpu.yaml")
    merged = strategic_merge(manifests[("Deployment", "protolm")], patch)
    (container,) = merged["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_value(container, "PROTOLM_DEVICE") == "gpu"
    assert env_value(container, "PROTOLM_BUNDLE_DIR")  # the base's variables survive the merge
    assert container["startupProbe"]["grpc"]
    images = {i["name"]: i["newName"] for i in load_yaml(K8S / "gpu" / "kustomization.yaml")["images"]}
    assert images["protolm-serve"] == "protolm-serve-gpu"
