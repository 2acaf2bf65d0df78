"""The KubeRay manifests under cluster/kuberay/ validate offline against the pinned KubeRay release's CRD schemas
(tests/schemas/kuberay/, derived from the release's CRDs) and obey the operator's rules a schema misses."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import shlex
import zoneinfo
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.unit.test_cluster_files import IMAGE, RAY_VERSION, ROOT, image_ray_version

KUBERAY_VERSION = "v1.7.0"  # tests/schemas/kuberay/SOURCE.md
KUBERAY = ROOT / "cluster" / "kuberay"
SCHEMAS = json.loads((ROOT / "tests" / "schemas" / "kuberay" / "kuberay.json").read_text())
# From KubeRay's ray-operator/controllers/ray/utils (validation.go, constant.go) at the pinned release.
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)
MAX_NAME = {"RayCluster": 53, "RayService": 47, "RayJob": 47, "RayCronJob": 36}


def manifests() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", doc) for p in sorted(KUBERAY.glob("*.yaml"))
            for i, doc in enumerate(yaml.safe_load_all(p.read_text())) if doc]


def ray_manifests() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in manifests() if doc["apiVersion"] == "ray.io/v1"]


def schema_errors(doc: dict) -> list[str]:
    """Every way ``doc`` breaks its kind's CRD schema (unknown fields included), as 'path: message'."""
    if doc.get("kind") not in SCHEMAS["$defs"]:
        return [f"kind {doc.get('kind')!r} is not a KubeRay {KUBERAY_VERSION} kind"]
    validator = jsonschema.Draft202012Validator({"$ref": f"#/$defs/{doc['kind']}", "$defs": SCHEMAS["$defs"]})
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def cluster_specs(doc: dict) -> list[dict]:
    """The RayCluster spec(s) a manifest creates."""
    spec = doc["spec"]
    if doc["kind"] == "RayService":
        return [spec["rayClusterConfig"]]
    return [spec if doc["kind"] == "RayCluster" else job.get("rayClusterSpec") for job in job_specs(doc) or [spec]]


def job_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "RayCronJob":
        return [doc["spec"]["jobTemplate"]]
    return [doc["spec"]] if doc["kind"] == "RayJob" else []


def pod_specs(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def operator_rule_errors(doc: dict) -> list[str]:
    """The checks of KubeRay's ValidateRay*Spec that the manifests here could break and a schema cannot see."""
    errors = []
    if len(doc["metadata"]["name"]) > MAX_NAME[doc["kind"]]:
        errors.append(f"name longer than {MAX_NAME[doc['kind']]} characters")
    for cluster in cluster_specs(doc):
        if cluster is None:
            errors.append("no rayClusterSpec (and no clusterSelector)")
            continue
        auth = cluster.get("authOptions") or {}
        if auth.get("mode", "token" if auth else "disabled") == "token":
            version = tuple(int(x) for x in re.findall(r"\d+", cluster.get("rayVersion", ""))[:3])
            if not version or version < MIN_RAY_FOR_TOKEN_AUTH:
                errors.append(f"token auth needs rayVersion >= 2.52.0, got {cluster.get('rayVersion')!r}")
        if (cluster.get("autoscalerOptions") or {}).get("version") == "v2":
            if any(p.get("restartPolicy") not in (None, "Never") for p in pod_specs(cluster)):
                errors.append("autoscaler v2 needs restartPolicy Never or unset")
    for job in job_specs(doc):
        if job.get("ttlSecondsAfterFinished", 0) > 0 and not job.get("shutdownAfterJobFinishes"):
            errors.append("ttlSecondsAfterFinished without shutdownAfterJobFinishes")
        if job.get("suspend") and not job.get("shutdownAfterJobFinishes"):
            errors.append("suspend without shutdownAfterJobFinishes")
        if job.get("submissionMode") == "InteractiveMode" and job.get("backoffLimit", 0) > 0:
            errors.append("backoffLimit with InteractiveMode")
    if doc["kind"] == "RayCronJob":
        schedule, tz = doc["spec"]["schedule"], doc["spec"].get("timeZone")
        if "TZ" in schedule or len(schedule.split()) != 5:
            errors.append(f"schedule {schedule!r} is not a 5-field cron expression without TZ")
        if tz is not None:
            try:
                zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                errors.append(f"unknown timeZone {tz!r}")
    return errors


def test_every_kind_is_shipped_under_its_own_name():
    assert sorted(doc["kind"] for _, doc in ray_manifests()) == ["RayCluster", "RayCronJob", "RayJob", "RayService"]
    # A RayCluster and a RayService of one name would both create the Service <name>-head-svc.
    names = [doc["metadata"]["name"] for _, doc in ray_manifests()]
    assert len(set(names)) == len(names), names


@pytest.mark.parametrize("name,doc", ray_manifests(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_validates_against_the_release_crd_schema(name, doc):
    assert schema_errors(doc) == [], name
    assert operator_rule_errors(doc) == [], name


def test_the_schema_check_catches_what_the_api_server_refuses():
    _, cluster = next(m for m in ray_manifests() if m[1]["kind"] == "RayCluster")
    typo = json.loads(json.dumps(cluster))
    typo["spec"]["headGroupSpec"]["rayStartParam"] = typo["spec"]["headGroupSpec"].pop("rayStartParams")
    assert any("rayStartParam" in e for e in schema_errors(typo))
    wrong_type = json.loads(json.dumps(cluster))
    wrong_type["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"
    assert any("maxReplicas" in e for e in schema_errors(wrong_type))
    bad_mode = json.loads(json.dumps(cluster))
    bad_mode["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions/mode" in e for e in schema_errors(bad_mode))


def test_the_operator_rules_catch_what_the_operator_refuses():
    _, job = next(m for m in ray_manifests() if m[1]["kind"] == "RayJob")
    old_ray = json.loads(json.dumps(job))
    old_ray["spec"]["rayClusterSpec"]["rayVersion"] = "2.51.1"
    assert any("2.52.0" in e for e in operator_rule_errors(old_ray))
    ttl_without_shutdown = json.loads(json.dumps(job))
    ttl_without_shutdown["spec"]["shutdownAfterJobFinishes"] = False
    assert operator_rule_errors(ttl_without_shutdown) == ["ttlSecondsAfterFinished without shutdownAfterJobFinishes"]
    _, cron = next(m for m in ray_manifests() if m[1]["kind"] == "RayCronJob")
    bad_tz = json.loads(json.dumps(cron))
    bad_tz["spec"]["timeZone"] = "Mars/Olympus"
    assert any("timeZone" in e for e in operator_rule_errors(bad_tz))


def test_clusters_run_the_image_s_ray_with_token_auth_from_a_secret():
    assert image_ray_version() == RAY_VERSION
    for name, doc in ray_manifests():
        for cluster in cluster_specs(doc):
            assert cluster["rayVersion"] == RAY_VERSION, name
            assert cluster["authOptions"]["mode"] == "token" and cluster["authOptions"]["secretName"], name
            images = {c["image"] for p in pod_specs(cluster) for c in p["containers"]}
            assert images == {IMAGE}, (name, images)
            for pod in pod_specs(cluster):  # the token comes from the Secret, never a literal in a manifest
                assert not [e for c in pod["containers"] for e in c.get("env", []) if "AUTH" in e["name"]], name


def test_jobs_and_the_service_create_the_same_cluster_as_raycluster_yaml():
    base = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())["spec"]
    for name, doc in ray_manifests():
        assert cluster_specs(doc) == [base], name


def test_jobs_shut_their_cluster_down_and_expire():
    jobs = [job for _, doc in ray_manifests() for job in job_specs(doc)]
    assert len(jobs) == 2
    for job in jobs:
        assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0


def test_rayservice_serves_cluster_serve_yaml():
    """serveConfigV2 is cluster/serve.yaml but for the proxy's bind address (the Pod's, for KubeRay's Service)."""
    _, service = next(m for m in ray_manifests() if m[1]["kind"] == "RayService")
    on_k8s = yaml.safe_load(service["spec"]["serveConfigV2"])
    local = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    assert on_k8s["http_options"].pop("host") == "0.0.0.0" and local["http_options"].pop("host") == "127.0.0.1"
    assert on_k8s == local
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(on_k8s)


def _entrypoint_target(argv: list[str]) -> str:
    """The module:attribute a job's entrypoint runs (a console script or `python -m`)."""
    if argv[0] == "python" and argv[1] == "-m":
        return f"{argv[2]}:main"
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == argv[0]]
    return script.value


def test_every_import_path_named_resolves():
    paths = []
    for _, doc in ray_manifests():
        if doc["kind"] == "RayService":
            paths += [a["import_path"] for a in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]]
        for job in job_specs(doc):
            argv = shlex.split(job["entrypoint"])
            paths.append(_entrypoint_target(argv))
            config = Path(argv[argv.index("--config") + 1])  # the image's copy of the project's file
            assert config.is_relative_to("/home/ray/raygbm") and (ROOT / config.relative_to("/home/ray/raygbm")).is_file()
    assert len(paths) == 3
    for path in paths:
        module, attr = path.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), path


def test_shared_volume_is_the_claim_the_pods_mount():
    (claim,) = [doc for _, doc in manifests() if doc["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, doc in ray_manifests():
        for cluster in cluster_specs(doc):
            for pod in pod_specs(cluster):
                assert [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]] == [claim["metadata"]["name"]]
                env = {e["name"]: e.get("value") for c in pod["containers"] for e in c["env"]}
                mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
                assert env["RAYGBM_HOME"] in mounts and env["MLFLOW_TRACKING_URI"].startswith("http"), name


def test_every_ray_container_takes_the_endpoint_token_from_a_secret():
    """serve.require_token (the production config) needs RAYGBM_ENDPOINT_TOKEN where the app is built: every
    Ray container reads it from the Secret, never from a literal value."""
    for name, doc in ray_manifests():
        for cluster in cluster_specs(doc):
            for pod in pod_specs(cluster):
                for container in pod["containers"]:
                    (token,) = [e for e in container["env"] if e["name"] == "RAYGBM_ENDPOINT_TOKEN"]
                    assert "value" not in token, name
                    assert token["valueFrom"] == {"secretKeyRef": {"name": "raygbm-endpoint-token", "key": "token"}}
