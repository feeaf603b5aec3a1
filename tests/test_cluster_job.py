"""The cluster workflow on a real local Ray cluster: `ray start --head` as a separate process (its own
temp dir and ports, token auth on), `ray job submit --working-dir . -- pgen …` jobs with the store on
the moto S3 server, then `serve deploy serve/config.yaml` and `/v1/generate` (once serve/ exists).

The cluster is started the way cluster/*.yaml start their nodes: RAY_AUTH_MODE=token with a token
file, the repository on PYTHONPATH, Serve's HAProxy ingress and throughput-optimised mode, a
`population` resource, and node credentials in its own environment, not in the jobs'. The jobs get the S3 endpoint only through cluster/job_env.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml

from pgen.generator.versions import load_generator
from pgen.store import CheckpointStore
from tests.s3server import free_port, free_ports
from tests.serving import local_serve_env
from tests.test_generator import TINY_CALIBRATION
from tests.test_population import TINY, assert_complete_runs

REPO = Path(__file__).resolve().parents[1]
MODEL = "simple_spread-agent-mlp-18x8x5-tanh"  # the tiny pipeline's generator
pytestmark = pytest.mark.slow


@dataclass
class LocalCluster:
    proc: subprocess.Popen
    temp_dir: Path
    dashboard_url: str
    token_file: Path

    @property
    def client_env(self) -> dict[str, str]:
        """A submitting shell: the job API address and the cluster's token (RAY_AUTH_MODE=token)."""
        return {**os.environ, "RAY_ADDRESS": self.dashboard_url, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def get(self, path: str, token: bool = True) -> int:
        headers = {"Authorization": f"Bearer {self.token_file.read_text()}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.dashboard_url + path, headers=headers), timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return 0  # not listening (yet)

    def stop(self) -> None:
        """SIGTERM to `ray start --block` stops the node's processes; then anything left in its group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def start_local_cluster(s3_env: dict[str, str]) -> LocalCluster:
    # a short temp dir: Ray's unix sockets live below it and have a path length limit
    temp_dir = Path(tempfile.mkdtemp(prefix="pgen-ray-", dir="/tmp"))
    token_file = temp_dir / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    names = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
    ports = dict(zip(names, free_ports(len(names))))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_")) and k != "PYTHONPATH"}
    env.update(s3_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), PYTHONPATH=str(REPO))
    env.update(local_serve_env())  # Serve's mode as cluster/*.yaml set it (side ports free: tests/serving.py)
    cmd = [shutil.which("ray") or "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--temp-dir={temp_dir / 'ray'}", "--num-cpus=2", '--resources={"population": 2}',
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--min-worker-port=0", "--max-worker-port=0",
           "--disable-usage-stats", *(f"--{name}={port}" for name, port in ports.items())]
    log = open(temp_dir / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = LocalCluster(proc, temp_dir, f"http://127.0.0.1:{ports['dashboard-port']}", token_file)
    deadline = time.monotonic() + 120
    try:
        while cluster.get("/api/jobs/") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: {(temp_dir / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(1)
    except BaseException:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    # the node's S3 credentials (an instance profile / Secret on a real cluster); no endpoint here
    cluster = start_local_cluster({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                   "AWS_DEFAULT_REGION": "us-east-1"})
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def ray_cli(cluster: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("ray") or "ray", *args], cwd=REPO, env=cluster.client_env,
                          capture_output=True, text=True, timeout=timeout)


def submit(cluster: LocalCluster, *entrypoint: str, options: tuple[str, ...] = (),
           timeout: float = 400) -> subprocess.CompletedProcess:
    """The documented form, from the repository root:
    ray job submit --runtime-env-json "$(python cluster/job_env.py)" --working-dir . -- <entrypoint>"""
    runtime_env = subprocess.run([sys.executable, "cluster/job_env.py"], cwd=REPO, env=cluster.client_env,
                                 capture_output=True, text=True, check=True).stdout
    return ray_cli(cluster, "job", "submit", "--runtime-env-json", runtime_env, "--working-dir", ".", *options,
                   "--", *entrypoint, timeout=timeout)


def new_bucket() -> str:
    bucket = f"pgen-cluster-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/pgen"


def test_jobs_need_the_token_and_run_the_uploaded_code(ray_cluster):
    assert ray_cluster.get("/api/jobs/", token=False) == 401
    assert ray_cluster.get("/api/jobs/") == 200
    out = submit(ray_cluster, "python", "-c", "import pgen.cli; print('pgen from', pgen.cli.__file__)")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("pgen from ")]
    # the copy `--working-dir .` uploaded, not the repository the cluster has on its PYTHONPATH
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in line and str(REPO) not in line, line


def test_populate_job_streams_to_s3_and_ray_job_stop_lets_it_finish(ray_cluster, s3_server):
    """Scaling a population down is `ray job stop`: pgen gets SIGTERM, and the runtime env's
    RAY_JOB_STOP_WAIT_TIME_S gives the intervals in flight time to end with a checkpoint (Ray's
    default, 3 s, would SIGKILL them)."""
    store_uri, job = new_bucket(), f"populate-{uuid.uuid4().hex[:8]}"
    tiny = [o for o in TINY if not o.startswith("population.checkpoint_every=")]
    # 2000 env steps per interval: an interval takes longer than Ray's default stop wait
    out = submit(ray_cluster, "pgen", "populate", *tiny, "population.checkpoint_every=20", "population.size=2",
                 "population.max_env_steps=null", f"store.uri={store_uri}", "run_id=cluster",
                 "+population.resources.population=1", options=("--submission-id", job, "--no-wait"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = CheckpointStore(store_uri, endpoint_url=s3_server.endpoint_url)
    runs = ["cluster-m000", "cluster-m001"]

    def last_steps() -> dict[str, int]:
        rows = store.read_records().table.to_pylist() if store.list("checkpoints/") else []
        return {run: max([r["step"] for r in rows if r["run_id"] == run], default=-1) for run in runs}

    deadline = time.monotonic() + 240
    while min((seen := last_steps()).values()) < 2000:  # both members streamed a trained checkpoint
        status = ray_cli(ray_cluster, "job", "status", job).stdout
        assert "RUNNING" in status or "PENDING" in status, ray_cli(ray_cluster, "job", "logs", job).stdout[-3000:]
        assert time.monotonic() < deadline, seen
        time.sleep(2)
    stop = ray_cli(ray_cluster, "job", "stop", job, timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "was stopped" in ray_cli(ray_cluster, "job", "status", job).stdout
    logs = ray_cli(ray_cluster, "job", "logs", job).stdout
    assert "SIGTERM: finishing the current intervals" in logs, logs[-3000:]
    assert "no node offers them" not in logs  # the cluster's `population` resource was there
    final = last_steps()
    for run in runs:
        assert final[run] > seen[run], (seen, final, logs[-3000:])  # the interval in flight ended with a checkpoint
        assert_complete_runs(store, [run], final[run], interval=2000)
    run = json.loads(store.get("runs/cluster-m000/run.json"))
    assert run["config"]["population"]["resources"] == {"population": 1.0}


@dataclass
class PipelineRun:
    store_uri: str
    output: str
    returncode: int
    out_dir: Path


# the smallest pipeline that runs every stage (a job's plumbing is under test here, not learning):
# 2 members × 1,200 env steps, 200 per checkpoint
SMALLEST_PIPELINE = [
    *TINY, "population.size=2", "population.max_env_steps=1200", "policy.hidden=[8]",
    "generator.d_model=16", "generator.n_layers=1", "generator.latent_dim=4", "generator.epochs=3",
    "generator.batch_size=8", "evaluate.episodes=4", "evaluate.samples=2", "evaluate.targets=2",
    "evaluate.max_top=2", "evaluate.states=2", *TINY_CALIBRATION,
]


@pytest.fixture(scope="module")
def pipeline_run(ray_cluster, s3_server, tmp_path_factory) -> PipelineRun:
    """`pgen pipeline` on the tiny profile as one job; its generator is what Serve serves below."""
    store_uri, out_dir = new_bucket(), tmp_path_factory.mktemp("pipeline-job")
    # out_dir is absolute: a job's relative paths land in its unpacked working dir on the driver's node
    out = submit(ray_cluster, "pgen", "pipeline", *SMALLEST_PIPELINE, f"store.uri={store_uri}", f"out_dir={out_dir}",
                 "run_id=cpipe", timeout=600)
    return PipelineRun(store_uri, out.stdout + out.stderr, out.returncode, out_dir)


def test_pipeline_runs_as_one_job(pipeline_run, s3_server):
    assert pipeline_run.returncode == 0, pipeline_run.output[-5000:]
    assert "generator (one request)" in pipeline_run.output and "succeeded" in pipeline_run.output
    summary = json.loads((pipeline_run.out_dir / "pipeline-cpipe.json").read_text())
    assert summary["store"] == pipeline_run.store_uri
    assert summary["groups"]["agent"]["model"] == f"{MODEL}@v0001"
    store = CheckpointStore(pipeline_run.store_uri, endpoint_url=s3_server.endpoint_url)
    gen = load_generator(store, MODEL)
    assert set(gen.info["dataset"]["runs"]) == {"cpipe-m000", "cpipe-m001"} and gen.info["dataset"]["rows"] == 14


# --- Serve: runs once serve/app.py and serve/config.yaml (issue 5) are in the tree ------------------

SERVE_CONFIG = REPO / "serve" / "config.yaml"


def deploy_serve_config(cluster: LocalCluster, store_uri: str, path: Path) -> int:
    """`serve deploy` of serve/config.yaml against the cluster, pointed at `store_uri` and a free HTTP
    port; the endpoint reaches the replicas through the same runtime env as the jobs'. Returns the port."""
    from tests.test_cluster import job_env_module

    config = yaml.safe_load(SERVE_CONFIG.read_text())
    port = free_port()
    config["http_options"] = {**(config.get("http_options") or {}), "host": "127.0.0.1", "port": port}
    config["grpc_options"] = {**config["grpc_options"], "port": free_port()}
    passthrough = job_env_module().job_runtime_env(environ=cluster.client_env)["env_vars"]
    for app in config["applications"]:
        app["args"] = {**(app.get("args") or {}), "store.uri": store_uri}
        runtime_env = app.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **passthrough}
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([shutil.which("serve") or "serve", "deploy", str(path), "--address", cluster.dashboard_url],
                         cwd=REPO, env=cluster.client_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return port


def http_json(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_serve_deploy_then_generate(ray_cluster, pipeline_run, tmp_path):
    assert pipeline_run.returncode == 0, pipeline_run.output[-3000:]
    port = deploy_serve_config(ray_cluster, pipeline_run.store_uri, tmp_path / "serve.yaml")
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 240
        while True:
            try:
                if http_json(base + "/healthz", timeout=5)[0] == 200:
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "the Serve app did not become healthy within 240 s"
            time.sleep(2)
        status, body = http_json(base + "/v1/generate", {"model": MODEL, "target_return": -50.0, "num": 2, "seed": 1})
        assert status == 200, body
        assert len(body["params"]) == 2 and body["version"] == "v0001" and body["num_params"] == len(body["params"][0])
        status, body = http_json(base + "/v1/generate", {"model": MODEL, "target_return": "high"})
        assert 400 <= status < 500, body
    finally:
        subprocess.run([shutil.which("serve") or "serve", "shutdown", "--yes", "--address", ray_cluster.dashboard_url],
                       cwd=REPO, env=ray_cluster.client_env, capture_output=True, timeout=120)
