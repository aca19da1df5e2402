"""Kubernetes without a cluster: the Job dagster-k8s builds for a GPU step, and deploy/k8s/*.yaml
against the Kubernetes API schema (the `kubernetes` client's models, gen_ssd_dagster/k8s_manifests.py).

Needs the `k8s` extra (dagster-k8s, which brings `kubernetes`; `make venv` installs it): without it
these tests skip, and under CI=true they fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

try:
    import dagster_k8s  # noqa: F401
except ImportError:
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true but dagster-k8s is not installed (pip install '.[k8s]')")
    pytest.skip("dagster-k8s is not installed (the k8s extra)", allow_module_level=True)

from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, UserDefinedDagsterK8sConfig, get_user_defined_k8s_config
from kubernetes.client import ApiClient

from gen_ssd_dagster.defs.resources import GPU_POOL
from gen_ssd_dagster.k8s_manifests import file_errors, manifest_errors
from gen_ssd_dagster.defs.k8s_steps import POOL_LABEL, gpu_ops, k8s_executor

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
RUN_CONFIG = {"job_namespace": "gen-ssd", "job_image": "registry.example/gen-ssd:1",
              "step_k8s_config": {"container_config": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}},
              "per_step_k8s_config": {"evaluation_scores": {"container_config": {
                  "resources": {"limits": {"nvidia.com/gpu": 2}}}}}}


@pytest.fixture(scope="module")
def location():
    from gen_ssd_dagster import scale_out

    return scale_out


def _step_job(location, op: str, tags: dict):
    """The V1Job of one step, merged the way dagster-k8s's K8sStepHandler does: the executor's
    step_k8s_config, the op's `dagster-k8s/config` tag, then per_step_k8s_config[op]."""
    mapped = k8s_executor(location.defs).apply_config_mapping({"config": RUN_CONFIG})
    assert mapped.success, mapped.errors
    cfg = mapped.value["config"]
    context = K8sContainerContext(namespace=cfg["job_namespace"],
                                  run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg["step_k8s_config"]))
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags))).merge(
        K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg["per_step_k8s_config"].get(op, {}))))
    return construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image=cfg["job_image"], dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"], job_name=f"dagster-step-{op}", pod_name=f"dagster-step-{op}",
        component="step_worker", user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/op": op}, env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": op}])


def test_trajectory_step_job_requests_a_gpu_tolerates_gpu_nodes_and_carries_its_pool(location):
    job_def = location.defs.resolve_job_def("generate_trajectories")
    node = job_def.graph.node_named("gen_ssd_trajectories")
    assert node.definition.pool == GPU_POOL
    # An op tag of the user's own (here: a node selector) is merged with what the pool adds.
    tags = {**node.tags, USER_DEFINED_K8S_CONFIG_KEY: json.dumps({"pod_spec_config": {"node_selector": {"gpu": "h100"}}})}
    job = _step_job(location, "gen_ssd_trajectories", tags)
    pod = job.spec.template
    container = pod.spec.containers[0]
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert container.resources.requests == {"cpu": "2", "memory": "8Gi"}  # step_k8s_config, every step
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert pod.metadata.labels[POOL_LABEL] == GPU_POOL
    assert pod.spec.node_selector == {"gpu": "h100"}
    assert container.image == "registry.example/gen-ssd:1" and job.metadata.namespace is None
    # What dagster-k8s would send to the API server passes the offline schema check.
    assert manifest_errors({"apiVersion": "batch/v1", "kind": "Job", **ApiClient().sanitize_for_serialization(job)}) == []


def test_run_config_overrides_a_gpu_step_and_cpu_steps_ask_for_no_gpu(location):
    ops = gpu_ops(location.defs)
    assert {"gen_ssd_trajectories", "evaluation_scores", "cold_start_student"} <= set(ops)
    assert "problems" not in ops and "benchmarks" not in ops
    evaluation = _step_job(location, "evaluation_scores", {}).spec.template
    assert evaluation.spec.containers[0].resources.limits == {"nvidia.com/gpu": "2"}  # per_step_k8s_config wins
    assert evaluation.spec.tolerations  # the rest of the pool's config stays
    problems = _step_job(location, "problems", {}).spec.template
    assert problems.spec.containers[0].resources.limits is None and not problems.spec.tolerations


def test_deploy_manifests_match_the_kubernetes_schema():
    files = sorted(DEPLOY.glob("*.yaml"))
    assert {f.name for f in files} >= {"mlflow.yaml", "vllm-teacher.yaml"}
    assert [e for f in files for e in file_errors(f)] == []


def test_schema_check_names_unknown_fields_wrong_types_and_missing_required_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: teacher}\nspec:\n  replicas: two\n"
                   "  selector: {matchLabels: {app: t}}\n  template:\n    spec:\n"
                   "      containers: [{name: vllm, image: x, resources: {limits: {nvidia.com/gpu: 4}}}]\n"
                   "      tolerations: [{key: nvidia.com/gpu, efect: NoSchedule}]\n"
                   "---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{targetPort: 80}]}\n"
                   "---\napiVersion: v1\nkind: Deploymnet\n")
    errors = file_errors(bad)
    assert errors == [
        f"{bad} #1 Deployment teacher: spec.replicas: expected int, got str 'two'",
        f"{bad} #1 Deployment teacher: spec.template.spec.tolerations[0].efect: unknown field of a V1Toleration",
        f"{bad} #2 Service s: spec.ports[0]: Invalid value for `port`, must not be `None`",
        f"{bad} #3 Deploymnet None: no Deploymnet in v1 in the Kubernetes API",
    ], errors


def test_k8s_executor_of_the_code_location_takes_the_execution_config_of_deploy_pipeline_yaml(location, monkeypatch):
    import yaml

    text = (DEPLOY.parent / "pipeline.yaml").read_text()
    block = text[text.index("# execution:"):]
    execution = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))["execution"]
    monkeypatch.setenv("GEN_SSD_EXECUTOR", "k8s")
    executor = location.executor_from_env(location.defs)
    assert executor.name == "k8s"
    mapped = executor.apply_config_mapping(execution)
    assert mapped.success, mapped.errors
    per_step = mapped.value["config"]["per_step_k8s_config"]
    assert per_step["evaluation_scores"]["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert per_step["gen_ssd_trajectories"]["pod_template_spec_metadata"]["labels"] == {POOL_LABEL: GPU_POOL}
