"""Offline checks of cluster/: the `ray up` configs through Ray's own validation, the KubeRay
manifests against KubeRay's CRD schema (tests/kuberay/), the job runtime env and .rayignore."""

from __future__ import annotations

import copy
import importlib.util
import json
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pgen.config import ServeSettings, compose_config
from pgen.population.worker import check_member_resources
from serve.launcher import ray_serve_env

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_UP = ["aws", "gcp", "local"]
KUBERAY = ["raycluster", "rayservice"]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_up(name: str) -> dict:
    """A `ray up` config as the cluster launcher sees it: defaults filled in, then validated."""
    config = prepare_config(load_yaml(CLUSTER / f"{name}.yaml"))
    validate_config(config)
    return config


def job_env_module():
    spec = importlib.util.spec_from_file_location("job_env", CLUSTER / "job_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- ray up configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_passes_rays_validation(name):
    config = ray_up(name)
    assert config["head_node_type"] in config["available_node_types"]
    for node_type in config["available_node_types"].values():
        assert node_type["min_workers"] <= node_type["max_workers"] <= max(config["max_workers"], 0)


def test_ray_validation_rejects_what_it_should():
    """The check above can fail: Ray's schema wants integer resources and known top-level keys."""
    config = load_yaml(CLUSTER / "aws.yaml")
    fractional = copy.deepcopy(config)
    fractional["available_node_types"]["cpu"]["resources"]["population"] = 1.5
    with pytest.raises(jsonschema.ValidationError, match="not of type 'integer'"):
        validate_config(prepare_config(fractional))
    misspelt = copy.deepcopy(config)
    misspelt["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(misspelt))


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_cloud_node_types_place_populations_on_cpu_and_models_on_gpu(name):
    config = ray_up(name)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # coordinator only
    population = [t for t in types.values() if "population" in t["resources"]]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert population and gpu
    for t in population:  # one member (1 CPU, population: 1) per CPU, never on a GPU machine
        assert t["resources"]["population"] == t["resources"]["CPU"] and "GPU" not in t["resources"]
    for t in gpu:
        assert "population" not in t["resources"]
        assert t["min_workers"] == 0  # GPUs cost money: only while a job or replica asks for one


def test_every_node_installs_the_same_pgen_and_ray_and_requires_the_token():
    configs = {name: ray_up(name) for name in RAY_UP}
    setups = {name: c["setup_commands"] for name, c in configs.items()}
    assert len({json.dumps(s) for s in setups.values()}) == 1, setups  # the configs do not drift apart
    (setup,) = {s for s in setups["aws"]}
    assert f"ray[default,serve,tune]=={ray.__version__}" in setup and "~/pgen" in setup
    for name, c in configs.items():
        assert c["file_mounts"]["~/pgen"] == "." and ".rayignore" in c["rsync_filter"]
        starts = c["head_start_ray_commands"] + c["worker_start_ray_commands"]
        ray_starts = [cmd for cmd in starts if "ray start" in cmd]
        assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in cmd and "PYTHONPATH=$HOME/pgen" in cmd
                                            for cmd in ray_starts), name
        # Serve in the mode `pgen serve` starts it in (serve.app.ray_serve_env), on every node
        assert all(f"{k}={v}" in cmd for cmd in ray_starts for k, v in ray_serve_env(ServeSettings()).items()), name
        images = [c.get("docker", {}).get("image", "")] + [t.get("docker", {}).get("worker_image", "")
                                                          for t in c["available_node_types"].values()]
        assert all(ray.__version__ in image for image in images if image), images
    local_starts = configs["local"]["head_start_ray_commands"] + configs["local"]["worker_start_ray_commands"]
    assert sum('--resources="{\\"population\\": $(nproc)}"' in cmd for cmd in local_starts) == 2


def test_configs_hold_placeholders_not_secrets():
    text = "\n".join(p.read_text() for p in CLUSTER.rglob("*") if p.is_file())
    for secret_marker in ("AKIA", "aws_secret_access_key", "BEGIN RSA", "BEGIN OPENSSH"):
        assert secret_marker not in text
    assert "<your-bucket>" in text and "<deep-learning-ami-id-for-your-region>" in text


# --- KubeRay manifests ---------------------------------------------------------------------------


def kuberay_schema(name: str) -> dict:
    return json.loads((REPO / "tests" / "kuberay" / f"{name}.schema.json").read_text())


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifest_matches_the_crd_schema(name):
    schema = kuberay_schema(name)
    assert "ray-project/kuberay v1.7.0" in schema["$comment"]
    jsonschema.validate(load_yaml(CLUSTER / "kuberay" / f"{name}.yaml"), schema)


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"].get("rayClusterConfig", manifest["spec"])


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_schema_rejects_misspelt_fields_wrong_types_and_values(name):
    manifest = load_yaml(CLUSTER / "kuberay" / f"{name}.yaml")
    schema = kuberay_schema(name)
    mutations = {
        "misspelt": lambda m: cluster_spec(m)["workerGroupSpecs"][0].update(minReplica=1),
        "type": lambda m: cluster_spec(m)["workerGroupSpecs"][0].update(maxReplicas="8"),
        "enum": lambda m: cluster_spec(m)["authOptions"].update(mode="tokens"),
        "required": lambda m: cluster_spec(m)["workerGroupSpecs"][0].pop("groupName"),
        "quantity": lambda m: cluster_spec(m)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        ["limits"].update(cpu="two"),
    }
    for what, mutate in mutations.items():
        bad = copy.deepcopy(manifest)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
            pytest.fail(f"{name}: the {what} mutation passed")


def test_kuberay_groups_place_populations_on_cpu_and_models_on_gpu():
    for name in KUBERAY:
        spec = cluster_spec(load_yaml(CLUSTER / "kuberay" / f"{name}.yaml"))
        assert spec["authOptions"]["mode"] == "token" and spec["rayVersion"] == ray.__version__
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu_limits["nvidia.com/gpu"] == "1" and "population" not in groups["gpu"].get("resources", {})
        if "population" in groups["cpu"].get("resources", {}):  # the population cluster: one member per CPU
            cpu_limits = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert groups["cpu"]["resources"]["population"] == cpu_limits["cpu"]


def test_rayservice_serve_config_is_a_serve_deploy_config_of_the_serve_app():
    from ray.serve.schema import ServeDeploySchema

    manifest = load_yaml(CLUSTER / "kuberay" / "rayservice.yaml")
    config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == "serve.app:app" and app.args["store.uri"].startswith("s3://")
    assert config.grpc_options.grpc_servicer_functions == ["serve.pgen_pb2_grpc.add_PolicyGeneratorServicer_to_server"]
    # every pod runs Serve in the mode `pgen serve` starts it in
    spec = cluster_spec(manifest)
    for container in [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
            g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]:
        assert {e["name"]: e["value"] for e in container["env"]} == ray_serve_env(ServeSettings())


def test_vendoring_refuses_a_field_the_crd_does_not_define():
    spec = importlib.util.spec_from_file_location("prune_crd", REPO / "tests" / "kuberay" / "prune_crd.py")
    prune_crd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prune_crd)
    crd_like = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "rayVersion": {"type": "string"}, "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}}}}}}
    unknown: list[str] = []
    pruned = prune_crd.prune(crd_like, [{"spec": {"rayVersion": "2", "rayVersoin": "2", "rayStartParams": {"x": "1"}}}],
                             "RayCluster", unknown)
    assert unknown == ["RayCluster.spec.rayVersoin"]
    assert pruned["properties"]["spec"]["additionalProperties"] is False
    assert pruned["properties"]["spec"]["properties"]["rayStartParams"]["additionalProperties"] == {"type": "string"}


# --- the job workflow ----------------------------------------------------------------------------


def test_job_runtime_env_passes_the_endpoint_and_region_but_never_credentials(tmp_path):
    job_env = job_env_module()
    environ = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "eu-west-1",
               "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token",
               "AWS_ENDPOINT_URL_S3": ""}
    runtime_env = job_env.job_runtime_env(environ=environ)
    assert runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "600",
                                       "AWS_ENDPOINT_URL": "http://minio:9000",
                                       "AWS_DEFAULT_REGION": "eu-west-1"}
    assert "secret" not in json.dumps(runtime_env) and "key" not in runtime_env["env_vars"].values()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    assert job_env.main(["--runtime-env", str(bad)]) == 2
    assert job_env.main(["--runtime-env", str(tmp_path / "missing.yaml")]) == 2


def test_rayignore_keeps_outputs_out_of_job_uploads(tmp_path):
    """Ray's own packaging of a working dir that holds outputs next to code, with pgen's .rayignore only."""
    from ray._private.runtime_env.packaging import create_package

    src = tmp_path / "repo"
    kept = ["pgen/cli.py", "pgen/conf/populate.yaml", "cluster/aws.yaml", "serve/app.py", "tests/test_x.py",
            "bench/README.md", "pyproject.toml"]
    dropped = ["pgen-store/checkpoints/part-000000.parquet", "pgen-runs/run/curve.png", "bench/results/gen.json",
               ".git/HEAD", "pgen/__pycache__/cli.cpython-311.pyc", "generated-m-v0001--30.safetensors",
               ".pytest_cache/v/cache", "pgen.egg-info/PKG-INFO", "outputs/2026/x.log"]
    for rel in kept + dropped:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    (src / ".rayignore").write_text((REPO / ".rayignore").read_text())
    create_package(str(src), tmp_path / "pkg.zip", include_gitignore=True)
    names = set(zipfile.ZipFile(tmp_path / "pkg.zip").namelist())
    assert set(kept) <= names and not set(dropped) & names, sorted(names)


def test_population_resources_are_a_typed_config_option():
    assert compose_config("populate", []).population.resources == {}
    cfg = compose_config("populate", ["+population.resources.population=1"])
    assert cfg.population.resources == {"population": 1.0}
    check_member_resources(cfg.population.resources)
    with pytest.raises(ValueError, match="use population.cpus_per_worker"):
        check_member_resources({"CPU": 1.0})
    with pytest.raises(ValueError, match="must be >= 0"):
        check_member_resources({"population": -1.0})
