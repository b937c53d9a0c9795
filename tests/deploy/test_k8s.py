"""deploy/k8s: the manifests parse, validate against the Kubernetes API schemas (when the
kubernetes-validate package is installed), and carry the probes, resources, termination grace
period, Services, autoscaler and scrape configuration the server needs."""

import copy
import math
import re
from pathlib import PurePosixPath

import pytest

from service.server import API_SERVICE, OVERALL
from tests.deploy.deploy_helpers import (
    K8S,
    built_images,
    healthcheck,
    load_yaml,
    load_yaml_documents,
    parse_dockerfile,
    served_config,
    serving_build,
    serving_image_programs,
    shell_commands,
)

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # grpc probes are GA since 1.27
SERVICE_MONITOR_API = "monitoring.coreos.com/v1"  # the API version the Prometheus Operator serves ServiceMonitor at
DEFAULT_METRICS_PATH = "/metrics"  # Prometheus' and the operator's default


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


@pytest.fixture(scope="module")
def image():
    return parse_dockerfile()


CPU_SUFFIXES = {"m": 1e-3, "": 1.0, "k": 1e3}


def cpu_quantity(value) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|)", str(value))
    assert match, f"CPU quantity {value!r}"
    return float(match.group(1)) * CPU_SUFFIXES[match.group(2)]


def env_value(container, entry) -> str | None:
    """An env entry's value as the kubelet sets it: a literal, or a resource field (rounded up,
    in units of its divisor); None for what only a cluster knows (secrets, config maps)."""
    if "value" in entry:
        return str(entry["value"])
    ref = entry.get("valueFrom", {}).get("resourceFieldRef")
    if ref is None:
        return None
    kind, _, resource = ref["resource"].partition(".")
    assert resource == "cpu", f"resourceFieldRef {ref} (only cpu is understood here)"
    value = cpu_quantity(container["resources"][kind][resource]) / cpu_quantity(ref.get("divisor", "1"))
    return str(math.ceil(value))


def container_stage(container, kustomization) -> str:
    """The deploy/Dockerfile stage of the image the container runs, once kustomize has set its
    images: the stage docker-compose.yml builds that image from (pushed to any registry)."""
    name, _, tag = container["image"].rpartition(":")
    for rule in kustomization.get("images", []):
        if rule["name"] == name:
            name, tag = rule.get("newName", name), rule.get("newTag", tag)
    reference = f"{name.rpartition('/')[2]}:{tag}"
    images = {ref.rpartition("/")[2]: stage for ref, stage in built_images().items()}
    assert reference in images, f"the container runs {name}:{tag}, which no compose service builds ({sorted(images)})"
    return images[reference]


def container_environment(image, stage, container) -> dict[str, str]:
    env = image.environment(stage)
    for entry in container.get("env", []):
        value = env_value(container, entry)
        if value is not None:
            env[entry["name"]] = value
    return env


def container_command(image, stage, container) -> list[str]:
    """The kubelet's command: `command` replaces the ENTRYPOINT (and drops the CMD), `args` the CMD."""
    entrypoint = container.get("command", image.stage(stage).exec_form("ENTRYPOINT"))
    args = container.get("args", [] if "command" in container else image.stage(stage).exec_form("CMD"))
    return [*entrypoint, *args]


def server_config(image, container, kustomization, root):
    """The ServerConfig the container's server starts with: the image's command and environment with the container's."""
    stage = container_stage(container, kustomization)
    command = container_command(image, stage, container)
    return served_config(command, container_environment(image, stage, container), root, serving_image_programs(image, stage))


def container_port(container, port) -> int:
    """A port reference (a number or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def service_targets(service, container) -> dict[str, int]:
    """Service port name -> the container port it forwards to."""
    return {p.get("name", ""): container_port(container, p.get("targetPort", p["port"])) for p in service["spec"]["ports"]}


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pre_stop_seconds(container) -> float:
    """How long a preStop hook holds SIGTERM back (none: 0): an exec `sleep N` (directly or
    through a shell) or the sleep action."""
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if not pre_stop:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    commands = shell_commands(command[-1]) if PurePosixPath(command[0]).name in ("sh", "bash") else [command]
    (sleep,) = [c for c in commands if PurePosixPath(c[0]).name == "sleep"]
    return float(sleep[1])


@pytest.fixture(scope="module")
def kustomization():
    return load_yaml(K8S / "kustomization.yaml")


@pytest.fixture(scope="module")
def gpu_kustomization():
    return load_yaml(K8S / "gpu" / "kustomization.yaml")


@pytest.fixture(scope="module")
def config(image, container, kustomization, tmp_path_factory):
    return server_config(image, container, kustomization, tmp_path_factory.mktemp("k8s-server"))


@pytest.fixture(scope="module")
def gpu_deployment(manifests, gpu_kustomization):
    (patch_ref,) = gpu_kustomization["patches"]
    patch = load_yaml(K8S / "gpu" / patch_ref["path"])
    return strategic_merge(manifests[(patch["kind"], patch["metadata"]["name"])], patch)


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
    # the GPU overlay is the base plus its patch
    assert [(K8S / "gpu" / r).resolve() for r in gpu["resources"]] == [K8S.resolve()]
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


def check_probes(container, config, image, stage):
    # the pod's ports are the ones its server listens on
    assert {p["containerPort"] for p in container["ports"]} == {config.port, config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container[probe].get("grpc")
        assert grpc, f"{probe} must ask the server's grpc.health.v1 service"
        assert container_port(container, grpc["port"]) == config.port, f"{probe} asks port {grpc['port']}, the server's gRPC port is {config.port}"
        assert grpc.get("service", "") in (OVERALL, API_SERVICE), f"{probe} asks about {grpc['service']!r}, which the server does not report"
    assert config.tls_cert is None, "the kubelet's gRPC probes speak plaintext"
    # loading and warming a bundle must fit in the startup probe's budget: at least what the image's own health check allows
    startup = container["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= healthcheck(image.stage(stage)).start_period, f"{budget}s to start"


def test_probes_ask_the_grpc_health_service_on_the_image_port(container, config, image, kustomization):
    check_probes(container, config, image, container_stage(container, kustomization))


def test_resources_are_requested_and_threads_follow_the_cpu_request(image, container, config, kustomization, tmp_path):
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    # one ONNX Runtime thread per requested CPU (0 would start one per node core), whatever the request is
    assert config.intra_op_threads == math.ceil(cpu_quantity(resources["requests"]["cpu"]))
    other = copy.deepcopy(container)
    other["resources"]["requests"]["cpu"] = str(int(cpu_quantity(resources["requests"]["cpu"])) + 3)
    assert server_config(image, other, kustomization, tmp_path).intra_op_threads == config.intra_op_threads + 3


def test_termination_grace_covers_pre_stop_and_the_servers_drain(deployment, container, config):
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    assert grace >= pre_stop_seconds(container) + config.drain_delay + config.drain_seconds + 1
    # a rollout never takes a replica away before its successor is ready
    strategy = deployment["spec"]["strategy"]
    assert str(strategy["rollingUpdate"]["maxUnavailable"]).rstrip("%") == "0"


def test_bundle_comes_read_only_from_a_volume(deployment, container, manifests, config, image, kustomization):
    bundle_dir = config.bundle_dir
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
    image_uid = int(image.user(container_stage(container, kustomization)).split(":")[0])
    assert security["runAsNonRoot"] is True and security["runAsUser"] == image_uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_services_suit_grpc_balancing(manifests, deployment, container, config):
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    services = [doc for (kind, _), doc in manifests.items() if kind == "Service" and selects(doc["spec"].get("selector", {}), pod_labels)]
    # a headless Service: DNS returns every ready pod, so gRPC clients balance per call; it
    # forwards only the gRPC port, declared as gRPC
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert headless, "no headless Service for client-side balancing"
    for service in headless:
        assert set(service_targets(service, container).values()) == {config.port}
        assert [p.get("appProtocol") for p in service["spec"]["ports"]] == ["grpc"]
    # a ClusterIP Service with the gRPC and the metrics ports
    (cluster,) = [s for s in services if s["spec"].get("clusterIP") != "None"]
    targets = service_targets(cluster, container)
    assert set(targets.values()) == {config.port, config.metrics_port}
    assert all(p.get("appProtocol") == "grpc" for p in cluster["spec"]["ports"] if targets[p.get("name", "")] == config.port)


def test_autoscaler_targets_the_deployment(manifests, deployment):
    (hpa,) = [doc for (kind, _), doc in manifests.items() if kind == "HorizontalPodAutoscaler"]
    ref = hpa["spec"]["scaleTargetRef"]
    assert manifests.get((ref["kind"], ref["name"])) is deployment and ref["apiVersion"] == deployment["apiVersion"], ref
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it


def test_metrics_are_scraped_by_service_monitor_or_annotations(manifests, deployment, container, config):
    # Prometheus servers that discover pods by annotation scrape the server's metrics port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(config.metrics_port)
    assert annotations.get("prometheus.io/path", DEFAULT_METRICS_PATH) == DEFAULT_METRICS_PATH
    # the Prometheus Operator's ServiceMonitor selects one Service (two would scrape every pod twice)
    # and scrapes, through it, the server's metrics port
    (monitor,) = [doc for (kind, _), doc in manifests.items() if kind == "ServiceMonitor"]
    assert monitor["apiVersion"] == SERVICE_MONITOR_API
    selected = [doc for (kind, _), doc in manifests.items() if kind == "Service"
                and selects(monitor["spec"]["selector"]["matchLabels"], doc["metadata"].get("labels", {}))]
    assert len(selected) == 1, [s["metadata"]["name"] for s in selected]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert service_targets(selected[0], container).get(endpoint["port"]) == config.metrics_port, endpoint
    assert endpoint.get("path", DEFAULT_METRICS_PATH) == DEFAULT_METRICS_PATH


def test_gpu_overlay_adds_a_gpu_limit_and_the_gpu_device(image, config, gpu_deployment, gpu_kustomization, tmp_path):
    (container,) = gpu_deployment["spec"]["template"]["spec"]["containers"]
    # the overlay runs the image built from the GPU serving stage (onnxruntime-gpu, a CUDA FAISS) ...
    stage = container_stage(container, gpu_kustomization)
    assert serving_build(image, stage).flavour == "gpu", stage
    # ... whose server asks for the GPU, on a node with one for it
    gpu_config = server_config(image, container, gpu_kustomization, tmp_path)
    assert gpu_config.device == "gpu"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu_config.bundle_dir == config.bundle_dir  # the base's variables survive the merge
    check_probes(container, gpu_config, image, stage)
