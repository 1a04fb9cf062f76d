"""The deployment files under infra/ stay in step with the code: every command they run names a
module and a config that exist, every stage has its RayJob, and the resources and mounts fit the
config each job runs. Fast: nothing here starts Ray or touches the network."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from common.config import load_config
from common.ray_env import WORKER_ENV
from stages.registry import GRAPH

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
STAGES = GRAPH.names  # one RayJob per stage of the graph
CLUSTER_KEYS = {
    "cluster_name", "max_workers", "upscaling_speed", "docker", "idle_timeout_minutes", "provider", "auth",
    "available_node_types", "head_node_type", "file_mounts", "setup_commands", "head_start_ray_commands",
    "worker_start_ray_commands",
}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def rayjobs() -> dict[str, dict]:
    return {path.stem.removeprefix("rayjob-"): load(path) for path in sorted((INFRA / "kuberay").glob("rayjob-*.yaml"))}


def cluster_commands() -> list[str]:
    cluster = load(INFRA / "ray-cluster.yaml")
    keys = ("initialization_commands", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [command for key in keys for command in cluster.get(key, [])]


def dockerfile_cmd() -> str:
    (line,) = [line for line in (INFRA / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return shlex.join(json.loads(line.removeprefix("CMD ")))  # the exec form: a JSON list


def all_commands() -> list[str]:
    return [job["spec"]["entrypoint"] for job in rayjobs().values()] + cluster_commands() + [dockerfile_cmd()]


def option(command: str, name: str) -> str:
    words = shlex.split(command)
    return words[words.index(name) + 1]


def pod_templates(job: dict) -> list[dict]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]


def test_every_yaml_under_infra_parses():
    paths = sorted(INFRA.rglob("*.yaml"))
    assert len(paths) == 1 + len(STAGES)
    for path in paths:
        assert isinstance(load(path), dict), path


def test_cluster_config_has_the_keys_ray_up_needs_and_fits_rays_schema():
    cluster = load(INFRA / "ray-cluster.yaml")
    assert CLUSTER_KEYS <= cluster.keys()
    assert cluster["head_node_type"] in cluster["available_node_types"]
    jsonschema = pytest.importorskip("jsonschema")
    # The schema `ray up` validates against, shipped with the installed Ray (found without importing it).
    ray_dir = importlib.util.find_spec("ray").submodule_search_locations[0]
    jsonschema.validate(cluster, json.loads(Path(ray_dir, "autoscaler", "ray-schema.json").read_text()))


def test_one_rayjob_per_stage_each_running_that_stage():
    jobs = rayjobs()
    assert sorted(jobs) == sorted(STAGES)
    for stage, job in jobs.items():
        assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
        assert job["spec"]["shutdownAfterJobFinishes"] is True
        words = shlex.split(job["spec"]["entrypoint"])
        assert words[:3] == ["python", "-m", f"stages.{stage}"], job["spec"]["entrypoint"]


def test_every_python_module_named_exists():
    modules = [m for command in all_commands() for m in re.findall(r"python -m (\S+)", command)]
    assert {f"stages.{stage}" for stage in STAGES} | {"pipeline"} <= set(modules)
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_every_config_named_exists_in_the_repo():
    configs = [option(command, "--config") for command in all_commands() if "--config" in command]
    assert len(configs) == len(STAGES)
    for config in configs:
        assert not Path(config).is_absolute() and (ROOT / config).is_file(), config


def test_rayjobs_give_workers_the_env_a_local_ray_gets():
    for stage, job in rayjobs().items():
        runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert runtime_env["working_dir"] == "/app", stage  # the Dockerfile's WORKDIR
        assert runtime_env["env_vars"] == WORKER_ENV, stage


def test_run_dir_and_config_paths_are_on_the_shared_volume_of_every_pod():
    for stage, job in rayjobs().items():
        entrypoint = job["spec"]["entrypoint"]
        run_dir = Path(option(entrypoint, "--run-dir"))
        assert run_dir.is_relative_to("/mnt/shared"), stage
        config = load_config(ROOT / option(entrypoint, "--config"))
        sources = [config.data.sft, config.data.pretrain, config.data.rankings]
        read_paths = [config.model.name_or_path, *(source.path for source in sources if source)]
        needed = [run_dir, *(Path(p) for p in read_paths if p and os.path.isabs(p))]
        for template in pod_templates(job):
            claims = {v["name"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v}
            (container,) = template["spec"]["containers"]
            shared = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
            for path in needed:
                assert any(path.is_relative_to(mount) for mount in shared), (stage, container["name"], path)


def test_worker_groups_hold_the_ray_train_workers_of_the_jobs_config():
    for stage, job in rayjobs().items():
        ray = load_config(ROOT / option(job["spec"]["entrypoint"], "--config")).ray
        cpus_needed = ray.num_workers * ray.resources_per_worker.get("CPU", 1.0)
        gpus_needed = ray.num_workers * ray.resources_per_worker.get("GPU", 1.0 if ray.use_gpu else 0.0)
        cpus = gpus = 0.0
        for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            cpus += group["replicas"] * float(limits["cpu"])
            gpus += group["replicas"] * float(limits.get("nvidia.com/gpu", 0))
        assert cpus >= cpus_needed, (stage, cpus, cpus_needed)
        assert gpus >= gpus_needed, (stage, gpus, gpus_needed)


def test_infra_files_agree_on_the_ray_version():
    texts = [path.read_text() for path in [INFRA / "Dockerfile", INFRA / "ray-cluster.yaml"]]
    versions = {v for text in texts for v in re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", text)}
    versions |= {job["spec"]["rayClusterSpec"]["rayVersion"] for job in rayjobs().values()}
    assert len(versions) == 1, versions


def test_dockerfile_installs_torch_before_the_project():
    lines = (INFRA / "Dockerfile").read_text().splitlines()
    assert any(line.startswith("FROM ") for line in lines)
    torch_installs = [i for i, line in enumerate(lines) if "pip install" in line and "TORCH" in line]
    project_installs = [i for i, line in enumerate(lines) if "pip install" in line and re.search(r' -e "?/app', line)]
    assert torch_installs and project_installs, "the Dockerfile must pip install torch, then -e /app"
    assert torch_installs[0] < project_installs[0]  # else pip picks a torch build for the project
    assert "WORKDIR /app" in lines


def test_local_ray_script_is_executable_bash():
    script = INFRA / "local-ray.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_the_image_copies_every_package_the_project_installs():
    import tomllib

    included = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {line.split()[-2] for line in (INFRA / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")}
    assert {pattern.rstrip("*") for pattern in included} <= copied
