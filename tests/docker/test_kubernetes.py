"""The Kubernetes manifests (docker/kubernetes/), checked offline: no cluster, no kubectl, no nginx.

Every manifest and every overlay's result validates against Kubernetes' own schemas (kubernetes-validate, strict: an
unknown field fails); what ties the files together holds: selectors and pod labels, container ports and the
properties' listeners and the sidecar's template variables, probes and the healthcheck commands, Secret and
ConfigMap references, the ConfigMap's copy of the sidecar template, kustomization resource lists, resources and
security settings on every container. Overlays are checked after a small strategic merge of their patches (the
subset kustomize applies here: maps merge, lists of named items merge by name, anything else is replaced).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scripts.serve import read_properties
from tests.nginx_proxy import SIDECAR_TEMPLATE, SIDECAR_VARIABLES

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = REPO_ROOT / "docker" / "kubernetes"
BASE_DIR = KUBERNETES_DIR / "base"
GPU_DIR = KUBERNETES_DIR / "overlays" / "gpu"
CANARY_DIR = KUBERNETES_DIR / "overlays" / "canary"
CANARY_DEPLOYMENT_DIR = CANARY_DIR / "deployment"
KUSTOMIZATION_DIRS = [KUBERNETES_DIR, BASE_DIR, GPU_DIR, CANARY_DIR, CANARY_DEPLOYMENT_DIR]
PROPERTIES = REPO_ROOT / "config" / "kubernetes.properties"
PRODUCTION_PROPERTIES = REPO_ROOT / "config" / "production.properties"
DOCKERFILES = [REPO_ROOT / "docker" / "Dockerfile", REPO_ROOT / "docker" / "Dockerfile.gpu"]
# The oldest Kubernetes the manifests use features of (ContainerResource HPA metrics are GA in 1.30,
# unhealthyPodEvictionPolicy in 1.31) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
# What config/kubernetes.properties changes in production.properties (and nothing else: see the test).
KUBERNETES_SETTINGS = {
    "disable_token_authorization": "true",
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://0.0.0.0:8082",
    "grpc_inference_address": "127.0.0.1",
    "grpc_management_address": "127.0.0.1",
}
HEALTHCHECK = ["python", "-m", "scripts.healthcheck"]
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it: 10x faster


# --- loading and merging ------------------------------------------------------------------------------------------

@functools.cache
def _parsed(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(document for document in yaml.load_all(path.read_text(), Loader=YAML_LOADER) if document)


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, parsed once per session; a fresh copy each time, so tests may change it."""
    return copy.deepcopy(list(_parsed(path)))


def base_manifests() -> dict[str, list[dict[str, Any]]]:
    """File name → its Kubernetes objects, for every manifest in base/ (the example Secret included)."""
    return {path.name: documents(path) for path in sorted(BASE_DIR.glob("*.yaml")) if path.name != "kustomization.yaml"}


def kustomization(folder: Path) -> dict[str, Any]:
    return documents(folder / "kustomization.yaml")[0]


def objects(kind: str) -> list[dict[str, Any]]:
    """The base's objects of one kind (the example Secret included)."""
    return [item for items in base_manifests().values() for item in items if item["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    found = objects(kind)
    assert len(found) == 1, f"expected one {kind} in {BASE_DIR}, found {len(found)}"
    return found[0]


def strategic_merge(base: Any, patch: Any) -> Any:
    """The patch merged into base the way kustomize merges these patches: maps recursively, named lists by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = (isinstance(base, list) and isinstance(patch, list)
             and all(isinstance(item, dict) and "name" in item for item in base + patch))
    if named:
        patches = {item["name"]: item for item in patch}
        merged_list = [strategic_merge(item, patches.pop(item["name"])) if item["name"] in patches else item
                       for item in base]
        return merged_list + list(patches.values())
    return copy.deepcopy(patch)


def with_image(deployment: dict[str, Any], images: list[dict[str, str]]) -> dict[str, Any]:
    """The Deployment with kustomize's `images:` applied (matched on the image name)."""
    result = copy.deepcopy(deployment)
    for container in result["spec"]["template"]["spec"]["containers"]:
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return result


def stable_deployment() -> dict[str, Any]:
    return with_image(one("Deployment"), kustomization(BASE_DIR)["images"])


def gpu_deployment() -> dict[str, Any]:
    patch = documents(GPU_DIR / "deployment-gpu.yaml")[0]
    return with_image(strategic_merge(stable_deployment(), patch), kustomization(GPU_DIR)["images"])


def canary_deployment() -> dict[str, Any]:
    """The canary as overlays/canary/deployment/ builds it: suffix, labels on selector and pods, its patch."""
    settings = kustomization(CANARY_DEPLOYMENT_DIR)
    deployment = stable_deployment()
    deployment["metadata"]["name"] += settings["nameSuffix"]
    for labels in settings["labels"]:
        assert labels["includeSelectors"] and labels["includeTemplates"]
        spec = deployment["spec"]
        for where, key in ((deployment["metadata"], "labels"), (spec["selector"], "matchLabels"),
                           (spec["template"]["metadata"], "labels")):
            where[key] = {**where[key], **labels["pairs"]}
    patch_files = [patch["path"] for patch in settings["patches"] if "path" in patch]
    for name in patch_files:
        patch = documents(CANARY_DEPLOYMENT_DIR / name)[0]
        deployment = strategic_merge(deployment, {key: value for key, value in patch.items() if key != "metadata"})
    return deployment


DEPLOYMENTS = {"stable": stable_deployment, "gpu": gpu_deployment, "canary": canary_deployment}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in pod_spec(deployment)["containers"] if item["name"] == name)


def env(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in item.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- schema validation --------------------------------------------------------------------------------------------

def every_base_object() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, items in base_manifests().items():
        for item in items:
            yield f"{name}:{item['kind']}", item


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(version):
    validated = []
    for label, item in every_base_object():
        kubernetes_validate.validate(item, version, strict=True)  # raises ValidationError naming the field
        validated.append(label)
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy", "Secret"} <= {label.split(":")[1] for label in validated}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(DEPLOYMENTS))
def test_every_overlays_deployment_validates_strictly(variant, version):
    kubernetes_validate.validate(DEPLOYMENTS[variant](), version, strict=True)


def planted_mistakes() -> Iterator[tuple[str, dict[str, Any]]]:
    typo = stable_deployment()
    container(typo, "torchserve")["resource"] = container(typo, "torchserve").pop("resources")
    yield "unknown-field", typo
    wrong_type = stable_deployment()
    wrong_type["spec"]["replicas"] = "two"
    yield "replicas-as-text", wrong_type
    no_port = one("Service")
    del no_port["spec"]["ports"][0]["port"]
    yield "service-port-without-number", no_port
    misplaced = one("HorizontalPodAutoscaler")
    misplaced["spec"]["targetCPUUtilizationPercentage"] = 70  # autoscaling/v1's field in a v2 object
    yield "v1-field-in-v2", misplaced


@pytest.mark.parametrize(("mistake", "manifest"), list(planted_mistakes()),
                         ids=[name for name, _ in planted_mistakes()])
def test_a_planted_mistake_fails_validation(mistake, manifest):
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("image", ["deepfake-detector", "deepfake-detector:latest", "registry.local:5000/deepfake"])
def test_an_untagged_or_latest_image_is_caught(image):
    deployment = stable_deployment()
    container(deployment, "proxy")["image"] = image
    with pytest.raises(AssertionError):
        assert_fixed_tags(deployment)


# --- what ties the files together ---------------------------------------------------------------------------------

def test_kubernetes_properties_differ_from_production_only_in_the_pods_settings():
    production, pod = read_properties(PRODUCTION_PROPERTIES), read_properties(PROPERTIES)
    assert {key: pod[key] for key in KUBERNETES_SETTINGS} == KUBERNETES_SETTINGS
    changed = {key for key in production.keys() | pod.keys() if production.get(key) != pod.get(key)}
    assert changed == {key for key in KUBERNETES_SETTINGS if production.get(key) != KUBERNETES_SETTINGS[key]}
    # Everything but metrics on loopback: a disabled token is safe only because no other pod reaches the APIs.
    hosts = {key: re.sub(r"^https?://", "", pod[key]).rsplit(":", 1)[0] if "://" in pod[key] else pod[key]
             for key in KUBERNETES_SETTINGS if key.endswith("_address")}
    assert {key for key, host in hosts.items() if host not in LOOPBACK} == {"metrics_address"}


def listener_port(properties: dict[str, str], key: str) -> int:
    return int(properties[key].rsplit(":", 1)[1])


@pytest.mark.parametrize("variant", sorted(DEPLOYMENTS))
def test_container_ports_match_the_properties_and_the_sidecar(variant):
    deployment = DEPLOYMENTS[variant]()
    properties = read_properties(PROPERTIES)
    metrics = listener_port(properties, "metrics_address")
    torchserve, proxy = container(deployment, "torchserve"), container(deployment, "proxy")
    # The only listener beyond loopback is the only port the torchserve container declares.
    assert {port["name"]: port["containerPort"] for port in torchserve["ports"]} == {"metrics": metrics}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == metrics
    # The proxy listens where its template is told to, and forwards to TorchServe's loopback listeners.
    variables = env(proxy)
    assert {port["name"]: port["containerPort"] for port in proxy["ports"]} == {
        "http": int(variables["SIDECAR_HTTP_LISTEN"]["value"]), "grpc": int(variables["SIDECAR_GRPC_LISTEN"]["value"])}
    assert variables["SIDECAR_UPSTREAM_HTTP"]["value"] == f"127.0.0.1:{listener_port(properties, 'inference_address')}"
    assert variables["SIDECAR_UPSTREAM_GRPC"]["value"] == f"127.0.0.1:{properties['grpc_inference_port']}"


def test_service_and_network_policy_ports_are_the_containers_ports():
    deployment = stable_deployment()
    named = {port["name"]: port["containerPort"] for item in pod_spec(deployment)["containers"]
             for port in item.get("ports", [])}
    service = one("Service")
    assert {port["name"]: named[port["targetPort"]] for port in service["spec"]["ports"]} == {
        "http": 8000, "grpc": 7000, "metrics": 8082}
    assert {port["name"]: port["port"] for port in service["spec"]["ports"]} == {"http": 8000, "grpc": 7000,
                                                                                  "metrics": 8082}
    grpc_port = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    rules = one("NetworkPolicy")["spec"]["ingress"]
    open_to_all = [rule for rule in rules if "from" not in rule]
    monitoring = [rule for rule in rules if "from" in rule]
    assert {port["port"] for rule in open_to_all for port in rule["ports"]} == {named["http"], named["grpc"]}
    assert {port["port"] for rule in monitoring for port in rule["ports"]} == {named["metrics"]}
    assert monitoring[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                                              "monitoring"}}}]


def test_selectors_match_the_pods_of_stable_and_canary_but_deployments_never_share_pods():
    stable, canary = stable_deployment(), canary_deployment()
    pods = {name: deployment["spec"]["template"]["metadata"]["labels"]
            for name, deployment in (("stable", stable), ("canary", canary))}
    for deployment in (stable, canary):
        spec = deployment["spec"]
        assert matches(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    assert not matches(stable["spec"]["selector"]["matchLabels"], pods["canary"])
    assert not matches(canary["spec"]["selector"]["matchLabels"], pods["stable"])
    assert pods["stable"]["track"] == "stable" and pods["canary"]["track"] == "canary"
    # The Service, the PodDisruptionBudget and the NetworkPolicy cover both tracks: traffic splits by replica count.
    for selector in (one("Service")["spec"]["selector"], one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]):
        assert matches(selector, pods["stable"]) and matches(selector, pods["canary"])
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": stable["metadata"]["name"]}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert canary["metadata"]["name"] == "deepfake-detector-canary" and canary["spec"]["replicas"] == 1


def test_canary_overlay_adds_only_a_deployment_with_its_own_image():
    settings = kustomization(CANARY_DEPLOYMENT_DIR)
    deleted = {yaml.safe_load(patch["patch"])["kind"] for patch in settings["patches"] if "patch" in patch}
    kept = {item["kind"] for items in base_manifests().values() for item in items} - deleted
    assert kept == {"Deployment", "Secret"} and "secret.example.yaml" not in kustomization(BASE_DIR)["resources"]
    canary_image = container(canary_deployment(), "torchserve")["image"]
    assert canary_image != container(stable_deployment(), "torchserve")["image"]
    assert kustomization(CANARY_DIR)["resources"] == ["../../base/", "deployment/"]


def image_commands() -> list[list[str]]:
    """The CMD of every stage of both Dockerfiles (exec form, JSON)."""
    return [json.loads(line.removeprefix("CMD")) for dockerfile in DOCKERFILES
            for line in dockerfile.read_text().splitlines() if line.startswith("CMD ")]


def test_torchserve_runs_the_images_command_with_the_kubernetes_properties():
    commands = image_commands()
    assert len(commands) >= len(DOCKERFILES) and all(command == commands[0] for command in commands)
    image_command = [word if word != "config/container.properties" else "config/kubernetes.properties"
                     for word in commands[0]]
    for variant, build in DEPLOYMENTS.items():
        assert container(build(), "torchserve")["args"] == image_command, variant
    assert "config/kubernetes.properties" in image_command and "--restart" in image_command


@pytest.mark.parametrize("variant", sorted(DEPLOYMENTS))
def test_probes_use_the_healthcheck_commands(variant):
    torchserve = container(DEPLOYMENTS[variant](), "torchserve")
    args = torchserve["args"]
    run_dir = ["--run-dir", args[args.index("--run-dir") + 1]]
    assert torchserve["readinessProbe"]["exec"]["command"] == [*HEALTHCHECK, "ready", *run_dir]
    assert torchserve["startupProbe"]["exec"]["command"] == [*HEALTHCHECK, "ready", *run_dir]
    assert torchserve["livenessProbe"]["exec"]["command"] == [*HEALTHCHECK, "live", *run_dir]
    startup = torchserve["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model-config.yaml's startupTimeout
    mounts = {mount["mountPath"] for mount in torchserve["volumeMounts"]}
    assert run_dir[1] in mounts and "/tmp" in mounts  # writable although the root filesystem is read-only


def test_every_secret_and_config_map_reference_exists():
    deployment = stable_deployment()
    config_maps = {item["metadata"]["name"]: item["data"] for item in objects("ConfigMap")}
    secrets = {item["metadata"]["name"]: item["stringData"] for item in objects("Secret")}
    referenced = 0
    for volume in pod_spec(deployment)["volumes"]:
        if "configMap" in volume:
            data = config_maps[volume["configMap"]["name"]]
            assert {item["key"] for item in volume["configMap"]["items"]} <= set(data)
            referenced += 1
    for item in pod_spec(deployment)["containers"]:
        mounted = {mount["name"] for mount in item.get("volumeMounts", [])}
        assert mounted <= {volume["name"] for volume in pod_spec(deployment)["volumes"]}
        for variable in env(item).values():
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                referenced += 1
                assert reference["name"] in secrets
                assert reference.get("optional") or reference["key"] in secrets[reference["name"]]
    assert referenced == 4  # two ConfigMap volumes, token and previous-token
    assert env(container(deployment, "proxy"))["API_TOKEN_PREVIOUS"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_config_map_carries_the_sidecar_template_and_the_pods_roll_when_it_changes():
    data = one("ConfigMap")["data"]
    assert data["sidecar.conf.template"] == SIDECAR_TEMPLATE.read_text(), (
        "docker/kubernetes/base/configmap.yaml's sidecar.conf.template differs from "
        "config/nginx/sidecar.conf.template: copy the file into it")
    checksum = hashlib.sha256("".join(data[key] for key in sorted(data)).encode()).hexdigest()
    annotation = stable_deployment()["spec"]["template"]["metadata"]["annotations"]["checksum/proxy-config"]
    assert annotation == checksum, f"set checksum/proxy-config in deployment.yaml to {checksum}"
    assert "include /etc/nginx/conf.d/*.conf;" in data["nginx.conf"] and "pid /tmp/nginx.pid;" in data["nginx.conf"]


def test_the_template_variables_are_the_ones_the_pod_sets_and_substitutes():
    template = SIDECAR_TEMPLATE.read_text()
    placeholders = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", template))
    assert placeholders == set(SIDECAR_VARIABLES)
    proxy_env = env(container(stable_deployment(), "proxy"))
    assert placeholders <= set(proxy_env)
    envsubst_filter = re.compile(proxy_env["NGINX_ENVSUBST_FILTER"]["value"])
    assert all(envsubst_filter.search(name) for name in placeholders)
    # Nothing else is substituted: not nginx's own variables, nor what Kubernetes or the image put in the environment.
    nginx_variables = set(re.findall(r"\$([a-z_][a-z0-9_]*)", template))
    assert nginx_variables and not any(envsubst_filter.search(name) for name in nginx_variables)
    image_environment = ("HOSTNAME", "PATH", "NGINX_VERSION", "HOME", "PKG_RELEASE")
    assert not any(envsubst_filter.search(name) for name in image_environment)


def test_the_sidecar_body_limit_is_torchserves_max_request_size():
    limit = read_properties(PROPERTIES)["max_request_size"]
    assert re.findall(r"client_max_body_size (\d+);", SIDECAR_TEMPLATE.read_text()) == [limit]


# --- the proxy's start: the token check before nginx -------------------------------------------------------------

def run_proxy_start(environment: dict[str, str]) -> subprocess.CompletedProcess:
    """The proxy container's command, with `printenv API_TOKEN_PREVIOUS` in place of the image's entrypoint."""
    command = container(stable_deployment(), "proxy")["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    return subprocess.run([*command, "printenv", "API_TOKEN_PREVIOUS"], env={"PATH": "/usr/bin:/bin", **environment},
                          capture_output=True, text=True, check=False, timeout=10)


def test_the_proxy_starts_with_a_token_and_no_previous_one():
    started = run_proxy_start({"API_TOKEN": "a" * 64})
    assert started.returncode == 0 and started.stdout == "\n", started.stderr  # previous-token absent → ""
    rotating = run_proxy_start({"API_TOKEN": "a" * 64, "API_TOKEN_PREVIOUS": "b" * 64})
    assert rotating.returncode == 0 and rotating.stdout == "b" * 64 + "\n"
    assert container(stable_deployment(), "proxy")["args"][:2] == ["/docker-entrypoint.sh", "nginx"]


@pytest.mark.parametrize("environment", [
    {}, {"API_TOKEN": ""}, {"API_TOKEN": "short"}, {"API_TOKEN": "a" * 63 + " "}, {"API_TOKEN": "a" * 63 + "$"},
    {"API_TOKEN": "a" * 64, "API_TOKEN_PREVIOUS": "tooshort"},
    {"API_TOKEN": "a" * 64, "API_TOKEN_PREVIOUS": "b" * 63 + "|"},
], ids=["unset", "empty", "short", "space", "dollar", "short-previous", "odd-previous"])
def test_the_proxy_refuses_to_start_with_a_bad_token(environment):
    refused = run_proxy_start(environment)
    assert refused.returncode == 1 and refused.stdout == "" and "Secret deepfake-api-token" in refused.stderr


# --- every container, every image, every kustomization ------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(DEPLOYMENTS))
def test_every_container_has_requests_and_limits_and_runs_unprivileged(variant):
    spec = pod_spec(DEPLOYMENTS[variant]())
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for item in spec["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(item["resources"][kind]), (item["name"], kind)
        security = item["securityContext"]
        assert security.get("runAsUser", 1000) != 0 and security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True and security["capabilities"] == {"drop": ["ALL"]}
        assert item["lifecycle"]["preStop"]["exec"]["command"], item["name"]
    assert spec["terminationGracePeriodSeconds"] >= 65 + 10  # the proxy's read timeout + its endpoint delay
    if variant == "gpu":
        assert container(DEPLOYMENTS[variant](), "torchserve")["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["tolerations"] and spec["nodeSelector"]


def assert_fixed_tags(deployment: dict[str, Any]) -> None:
    for item in pod_spec(deployment)["containers"]:
        name, separator, tag = item["image"].rpartition(":")
        assert separator and name and tag and tag != "latest" and "/" not in tag, item["image"]


@pytest.mark.parametrize("variant", sorted(DEPLOYMENTS))
def test_every_image_has_a_fixed_tag(variant):
    deployment = DEPLOYMENTS[variant]()
    assert_fixed_tags(deployment)
    assert container(deployment, "torchserve")["image"].split(":")[0] == "deepfake-detector"
    assert re.fullmatch(r"nginx:1\.27\.\d+", container(deployment, "proxy")["image"])


@pytest.mark.parametrize("folder", KUSTOMIZATION_DIRS, ids=lambda folder: str(folder.relative_to(KUBERNETES_DIR)))
def test_each_kustomization_lists_every_yaml_in_its_folder(folder):
    settings = kustomization(folder)
    patch_files = [patch["path"] for patch in settings.get("patches", []) if "path" in patch]
    listed = [*settings.get("resources", []), *patch_files]
    for entry in listed:
        assert (folder / entry).exists(), f"{folder / 'kustomization.yaml'} lists {entry}, which does not exist"
    files = {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"}
    unlisted = {name for name in files if name not in listed and not name.endswith(".example.yaml")}
    assert not unlisted, f"{folder / 'kustomization.yaml'} does not list {sorted(unlisted)}"
    assert settings["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and settings["kind"] == "Kustomization"


def test_the_secret_example_says_how_to_create_the_real_one():
    text = (BASE_DIR / "secret.example.yaml").read_text()
    command = next(line.strip("# ").strip() for line in text.splitlines() if "create secret generic" in line)
    words = shlex.split(command)
    assert words[:6] == ["kubectl", "-n", "deepfake", "create", "secret", "generic"]
    assert words[6] == one("Secret")["metadata"]["name"] == "deepfake-api-token"
    assert "--from-literal=token=$(openssl" in command and "rand -hex 32)" in command
