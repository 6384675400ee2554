"""The Helm chart (k8s/critic-rm) and its checked-in renders (k8s/rendered/*.yaml).

(a) values.yaml and the 70B example validate against values.schema.json, which rejects typos;
(b) the renders are valid Kubernetes objects (kubernetes-validate --strict);
(c) checkov finds nothing beyond the skips listed below, each with its reason;
(d) with helm available: `helm lint --strict` passes and `helm template` reproduces each render;
(e) templates only use values that exist, every value is used, and the rendered objects are wired
    to each other, to the service's settings, routes and metrics, and to the Docker image.
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.api.routes import router
from service.observability.metrics import Metrics
from service.settings import Settings
from tests.deploy.tooling import REPO, find_tool, require_tool

CHART = REPO / "k8s" / "critic-rm"
RENDERED = REPO / "k8s" / "rendered"
# name -> (extra values file or None, checked-in render)
RENDERS: dict[str, tuple[Path | None, Path]] = {
    "default": (None, RENDERED / "default.yaml"),
    "70b": (REPO / "k8s" / "examples" / "values-70b.yaml", RENDERED / "70b.yaml"),
}
RELEASE = "critic-rm"
IMAGE_UID = 10001  # USER in docker/Dockerfile.gpu

# checkov findings accepted per render, each with the reason. A skip that no longer fires fails
# the test too, so this list stays exact.
NO_NAMESPACE = (
    "The chart sets no namespace: `helm install --namespace` places the objects, so the "
    "rendered set has none and checkov assumes `default`."
)
CHECKOV_SKIPS: dict[str, dict[str, str]] = {
    "default": {
        "CKV_K8S_21": NO_NAMESPACE,
        "CKV_K8S_43": (
            "Default values cannot know the digest of the user's image build; image.digest pins "
            "it (the 70B example sets it, and there this check passes)."
        ),
        "CKV_K8S_15": (
            "imagePullPolicy IfNotPresent: a multi-GB CUDA image is not re-pulled on every GPU "
            "pod start. Safe with immutable tags, and with image.digest (70B example) checkov "
            "accepts it."
        ),
    },
    "70b": {
        "CKV_K8S_21": NO_NAMESPACE,
        "CKV_K8S_35": (
            "The service reads its settings only from CRM_* environment variables "
            "(pydantic-settings), so the Redis URL and API keys come from the Secret via "
            "envFrom; no secret value is in the pod spec."
        ),
    },
}

# Values that become CRM_* settings: values path -> (env var, Settings field).
VALUE_ENV = {
    "engine.layout": "CRM_ENGINE_LAYOUT",
    "engine.gpuMemoryUtilization": "CRM_GPU_MEMORY_UTILIZATION",
    "engine.maxModelLen": "CRM_MAX_MODEL_LEN",
    "engine.generatorDtype": "CRM_GENERATOR_DTYPE",
    "engine.scorerDtype": "CRM_SCORER_DTYPE",
    "engine.scorerBackend": "CRM_SCORER_BACKEND",
    "engine.enforceEager": "CRM_ENFORCE_EAGER",
    "engine.maxNumSeqs": "CRM_MAX_NUM_SEQS",
    "settings.logLevel": "CRM_LOG_LEVEL",
    "settings.verifyHashes": "CRM_VERIFY_HASHES",
    "settings.maxItemsPerRequest": "CRM_MAX_ITEMS_PER_REQUEST",
    "settings.maxNumCritiques": "CRM_MAX_NUM_CRITIQUES",
    "settings.maxCritiqueTokens": "CRM_MAX_CRITIQUE_TOKENS",
    "settings.maxTemperature": "CRM_MAX_TEMPERATURE",
    "settings.batchMaxItems": "CRM_BATCH_MAX_ITEMS",
    "settings.batchMaxTokens": "CRM_BATCH_MAX_TOKENS",
    "settings.batchMaxWaitMs": "CRM_BATCH_MAX_WAIT_MS",
    "settings.redisTimeoutS": "CRM_REDIS_TIMEOUT_S",
    "settings.cacheTtlS": "CRM_CACHE_TTL_S",
    "settings.cacheMaxEntries": "CRM_CACHE_MAX_ENTRIES",
    "settings.warmup": "CRM_WARMUP",
    "service.port": "CRM_PORT",
}
# Environment variables the chart passes that service/settings.py does not read (yet).
NOT_SETTINGS = {
    "CRITIC_RM_BOOTSTRAP": "read by docker/entrypoint.sh, not by the service",
}
REQUIRED_ENV = {
    "CRM_TENSOR_PARALLEL_SIZE",
    "CRM_GPU_MEMORY_UTILIZATION",
    "CRM_MAX_MODEL_LEN",
    "CRM_GENERATOR_DTYPE",
    "CRM_SCORER_DTYPE",
    "CRM_DRAIN_TIMEOUT_S",
    "CRM_CHECKPOINT_ROOT",
}


# ---------------------------------------------------------------- loading


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one,
    the API server may reject the object)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=UniqueKeyLoader) if d]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge key by key, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values(render: str) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    extra = RENDERS[render][0]
    return merge(values, yaml.safe_load(extra.read_text())) if extra else values


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def get(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def objects(render: str) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in load_docs(RENDERS[render][1]):
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in out, f"{render}: two {key}"
        out[key] = doc
    return out


def gateway(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objs[("Deployment", RELEASE)]


def container(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = gateway(objs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def env_of(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The gateway's environment as rendered: ConfigMap + chart Secret (decoded) + env."""
    env: dict[str, str] = {}
    for ref in container(objs).get("envFrom", []):
        if "configMapRef" in ref:
            env.update(objs[("ConfigMap", ref["configMapRef"]["name"])]["data"])
        elif ("Secret", ref["secretRef"]["name"]) in objs:
            data = objs[("Secret", ref["secretRef"]["name"])]["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    for item in container(objs).get("env", []):
        env[item["name"]] = item.get("value", "")
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- (a) values schema


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_values_match_the_schema(render: str) -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.Draft7Validator(schema()).validate(chart_values(render))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("engine.tensorParalelSize", 2),  # a typo
        ("engine.gpuMemoryUtilization", 0.99),
        ("engine.scorerDtype", "fp8-ish"),
        ("gpu.count", 0),
        ("image.digest", "latest"),
        ("settings.logLevel", "loud"),
        ("autoscaling.targetQueueDepth", 128),  # must be a quantity string
        ("redis.url", "http://redis:6379"),
        ("checkpointz", {}),
    ],
)
def test_schema_rejects_bad_values(path: str, value: Any) -> None:
    values = chart_values("default")
    node = values
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema()).validate(values)


def _schema_keys(s: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, sub in s.get("properties", {}).items():
        keys.add(prefix + name)
        if sub.get("additionalProperties") is False:
            keys |= _schema_keys(sub, f"{prefix}{name}.")
    return keys


def _value_keys(v: dict[str, Any], s: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, sub in v.items():
        keys.add(prefix + name)
        sub_schema = s.get("properties", {}).get(name, {})
        if isinstance(sub, dict) and sub_schema.get("additionalProperties") is False:
            keys |= _value_keys(sub, sub_schema, f"{prefix}{name}.")
    return keys


def test_schema_describes_exactly_the_values() -> None:
    values = chart_values("default")
    assert _schema_keys(schema()) == _value_keys(values, schema())


# ---------------------------------------------------------------- (e) templates vs values

VALUE_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def template_value_paths() -> set[str]:
    paths: set[str] = set()
    for path in sorted((CHART / "templates").iterdir()):
        paths |= {m.group(1).lstrip(".") for m in VALUE_REF.finditer(path.read_text())}
    return paths


def leaf_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out |= leaf_paths(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_every_template_value_exists() -> None:
    values = chart_values("default")
    refs = template_value_paths()
    assert len(refs) > 40, refs
    missing = []
    for ref in sorted(refs):
        try:
            get(values, ref)
        except (KeyError, TypeError):
            missing.append(ref)
    assert not missing, f"templates use values that values.yaml lacks: {missing}"


def test_every_value_is_used_by_a_template() -> None:
    refs = template_value_paths()
    # Values reached through a helper that takes a sub-tree (imageRef takes .Values.image).
    unused = [
        leaf
        for leaf in sorted(leaf_paths(chart_values("default")))
        if not any(leaf == r or leaf.startswith(r + ".") for r in refs)
    ]
    assert not unused, f"values no template reads: {unused}"


# ---------------------------------------------------------------- (b) kubernetes-validate


@pytest.mark.parametrize("render", sorted(RENDERS))
@pytest.mark.parametrize("k8s_version", ["1.29.0", None])
def test_renders_are_valid_kubernetes(render: str, k8s_version: str | None) -> None:
    tool = require_tool("kubernetes-validate")
    cmd = [str(tool), "--strict"]
    if k8s_version:
        cmd += ["-k", k8s_version]
    proc = subprocess.run(
        [*cmd, str(RENDERS[render][1])], capture_output=True, text=True, timeout=120, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ERROR" not in out, out
    kinds = {doc["kind"] for doc in load_docs(RENDERS[render][1])}
    passed = out.count(" passed for resource ")
    # Every object was checked against a schema, except the Prometheus Operator CRDs (the
    # PrometheusRule's content is checked by promtool in test_alerts.py).
    unchecked = [line for line in out.splitlines() if line.startswith("WARN")]
    crds = ("kind ServiceMonitor ", "kind PrometheusRule ")
    assert all(any(c in line for c in crds) for line in unchecked), unchecked
    assert passed + len(unchecked) == len(load_docs(RENDERS[render][1])), out
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds


def test_servicemonitor_targets_the_metrics_endpoint() -> None:
    """The CRD has no schema in kubernetes-validate: check it against the Service here."""
    objs = objects("70b")
    monitor = objs[("ServiceMonitor", RELEASE)]
    service = objs[("Service", RELEASE)]
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and "/metrics" in app_routes()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# ---------------------------------------------------------------- (c) checkov


@pytest.fixture(scope="module")
def checkov_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """render -> failed check ids, from one checkov run over both renders."""
    tool = require_tool("checkov")
    workdir = tmp_path_factory.mktemp("checkov")
    cmd = [str(tool), "--framework", "kubernetes", "--output", "json"]
    cmd += ["--skip-download", "--soft-fail"]
    for render in RENDERS:
        cmd += ["-f", str(RENDERS[render][1])]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, check=False, cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failures: dict[str, set[str]] = {render: set() for render in RENDERS}
    passed = 0
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        passed += len(report["results"]["passed_checks"])
        for check in report["results"]["failed_checks"]:
            render = Path(check["file_path"]).stem
            failures[render].add(check["check_id"])
    assert passed > 100, "checkov checked (almost) nothing"
    return failures


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_checkov_finds_nothing_unexpected(
    render: str, checkov_failures: dict[str, set[str]]
) -> None:
    skips = CHECKOV_SKIPS[render]
    unexpected = sorted(checkov_failures[render] - set(skips))
    assert not unexpected, f"checkov failed checks on {render}: {unexpected}"
    stale = sorted(set(skips) - checkov_failures[render])
    assert not stale, f"skips that no longer fire on {render} (remove them): {stale}"
    assert all(len(reason) > 40 for reason in skips.values())


# ---------------------------------------------------------------- (d) helm


def helm_or_skip() -> Path:
    helm = find_tool("helm")
    if helm is None:
        pytest.skip(
            "helm is not installed (not on PATH, not in .venv-tools/bin): `helm lint` and the "
            "`helm template` comparison with k8s/rendered/ did not run"
        )
    return helm


def _helm(helm: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _values_args(render: str) -> list[str]:
    extra = RENDERS[render][0]
    return ["-f", str(extra)] if extra else []


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_helm_lint(render: str) -> None:
    helm = helm_or_skip()
    out = _helm(helm, "lint", "--strict", str(CHART), *_values_args(render))
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_helm_template_matches_the_checked_in_render(render: str) -> None:
    helm = helm_or_skip()
    fresh = _helm(helm, "template", RELEASE, str(CHART), *_values_args(render))
    checked_in = RENDERS[render][1].read_text()
    # The render's own header is the leading comment block; helm's output starts at "---".
    body = checked_in[checked_in.index("---\n") :]
    if fresh != body:
        diff = "".join(
            difflib.unified_diff(
                body.splitlines(True), fresh.splitlines(True), "checked-in", "helm template", n=2
            )
        )
        pytest.fail(
            f"{RENDERS[render][1]} is stale; regenerate it (docs/deployment.md, Checks of the "
            f"deployment files):\n{diff}"
        )


def test_helm_rejects_redis_url_with_in_chart_redis() -> None:
    helm = helm_or_skip()
    proc = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--set", "redis.url=redis://r:6379/0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0 and "not both" in proc.stderr


# ---------------------------------------------------------------- (e) rendered wiring


def app_routes() -> set[str]:
    return {getattr(r, "path", "") for r in router.routes}


def metric_names() -> set[str]:
    registry: CollectorRegistry = Metrics().registry
    return {m.name for m in registry.collect()}


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_environment_matches_settings_and_values(
    render: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = objects(render)
    values = chart_values(render)
    env = env_of(objs)
    assert set(env) >= REQUIRED_ENV, REQUIRED_ENV - set(env)
    fields = {f"CRM_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k not in fields and k not in NOT_SETTINGS}
    assert not unknown, f"env vars the service does not read: {unknown}"
    stale = fields & set(NOT_SETTINGS)
    assert not stale, f"now real settings, drop them from NOT_SETTINGS: {stale}"
    for key in list(env):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if key in fields:
            monkeypatch.setenv(key, value)
    settings = Settings()  # type: ignore[call-arg]  # parses (and so validates) every value
    for path, var in VALUE_ENV.items():
        field = var.removeprefix("CRM_").lower()
        assert getattr(settings, field) == get(values, path), (path, var, env.get(var))
    tp = values["engine"]["tensorParallelSize"] or values["gpu"]["count"]
    assert settings.tensor_parallel_size == tp
    assert str(settings.checkpoint_root) == "/checkpoints"
    assert int(env["CRM_DRAIN_TIMEOUT_S"]) == values["drain"]["timeoutSeconds"]
    if values["settings"]["modelVersion"]:
        assert settings.model_version == values["settings"]["modelVersion"]
    else:
        assert "CRM_MODEL_VERSION" not in env
    # Redis: the in-chart one by its Service, or the external URL from the Secret.
    if values["redis"]["deploy"]:
        redis_svc = objs[("Service", f"{RELEASE}-redis")]
        assert settings.redis_url == f"redis://{RELEASE}-redis:6379/0"
        assert [p["port"] for p in redis_svc["spec"]["ports"]] == [6379]
    else:
        assert settings.redis_url == values["redis"]["url"]
    # The entrypoint's bootstrap switch: off on a read-only claim.
    read_only_claim = values["checkpoints"]["existingClaim"] and values["checkpoints"]["readOnly"]
    assert env["CRITIC_RM_BOOTSTRAP"] == ("0" if read_only_claim else "1")
    assert "CRITIC_RM_BOOTSTRAP" in (REPO / "docker" / "entrypoint.sh").read_text()


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_gateway_pod_spec(render: str) -> None:
    objs = objects(render)
    values = chart_values(render)
    deploy = gateway(objs)
    pod = deploy["spec"]["template"]
    spec = pod["spec"]
    c = container(objs)
    env = env_of(objs)

    # GPUs: one tensor-parallel shard per requested GPU.
    gpus = values["gpu"]["count"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert int(env["CRM_TENSOR_PARALLEL_SIZE"]) == gpus
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec.get("affinity", {}) == values["affinity"]

    # Probes on real routes.
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"/ready", "/health", "/metrics", "/score"} <= app_routes()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(env["CRM_PORT"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports

    # Graceful shutdown: preStop sleep, then the drain, inside the grace period.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) == values["drain"]["preStopSleepSeconds"]
    drain = int(env["CRM_DRAIN_TIMEOUT_S"])
    grace = spec["terminationGracePeriodSeconds"]
    assert grace == int(pre_stop[1]) + drain + values["drain"]["marginSeconds"]
    assert grace > int(pre_stop[1]) + drain

    # Non-root, matching the image's user; read-only root with writable scratch.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == IMAGE_UID
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False

    # Volumes: shm in memory, checkpoints at /checkpoints, every mount backed by a volume.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/tmp", "/home/crm", "/checkpoints"} <= set(mounts)
    ckpt = volumes[mounts["/checkpoints"]["name"]]
    claim = values["checkpoints"]["existingClaim"]
    if claim:
        assert ckpt["persistentVolumeClaim"]["claimName"] == claim
        assert mounts["/checkpoints"].get("readOnly", False) == values["checkpoints"]["readOnly"]
    else:
        assert "emptyDir" in ckpt

    # Image.
    image = values["image"]
    expected = (
        f"{image['repository']}@{image['digest']}"
        if image["digest"]
        else f"{image['repository']}:{image['tag']}"
    )
    assert c["image"] == expected and c["args"] == ["serve"]

    # envFrom only references objects that exist (or the user's own Secret).
    for ref in c["envFrom"]:
        if "configMapRef" in ref:
            kind, name = "ConfigMap", ref["configMapRef"]["name"]
        else:
            kind, name = "Secret", ref["secretRef"]["name"]
        assert (kind, name) in objs or name == values["auth"]["existingSecret"], (kind, name)


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_objects_select_each_other(render: str) -> None:
    objs = objects(render)
    values = chart_values(render)
    deploy = gateway(objs)
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels)
    service = objs[("Service", RELEASE)]
    assert selects(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["port"] == values["service"]["port"] and port["targetPort"] == "http"
    pdb = objs[("PodDisruptionBudget", RELEASE)]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    policy = objs[("NetworkPolicy", RELEASE)]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    if values["redis"]["deploy"]:
        redis = objs[("Deployment", f"{RELEASE}-redis")]
        redis_labels = redis["spec"]["template"]["metadata"]["labels"]
        assert not selects(selector, redis_labels), "the gateway selector also picks Redis pods"
        allowed = objs[("NetworkPolicy", f"{RELEASE}-redis")]["spec"]["ingress"][0]["from"]
        assert selects(allowed[0]["podSelector"]["matchLabels"], pod_labels)

    hpa = objs.get(("HorizontalPodAutoscaler", RELEASE))
    assert (hpa is not None) == values["autoscaling"]["enabled"]
    if hpa is None:
        assert deploy["spec"]["replicas"] == values["replicaCount"]
        return
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "critic_rm_queue_depth"
    assert "critic_rm_queue_depth" in metric_names()
    assert metric["pods"]["target"]["type"] == "AverageValue"


def test_grafana_dashboard_configmap_carries_the_dashboard() -> None:
    objs = objects("70b")
    cm = objs[("ConfigMap", f"{RELEASE}-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["critic-rm.json"])
    source = json.loads((REPO / "docker" / "grafana" / "dashboards" / "critic-rm.json").read_text())
    assert shipped == source
    assert ("ConfigMap", f"{RELEASE}-dashboard") not in objects("default")
