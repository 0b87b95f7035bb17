"""The deployment files under cluster/ and jobs/: they parse and say what the docs say.

Fast and offline: no Ray is started, no cluster or Kubernetes API is contacted.
"""

from __future__ import annotations

import configparser
import http.server
import importlib.util
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from nst_engine.distributed.jobs import entrypoint, is_job_file, load_job
from nst_engine.distributed.preemption import DEFAULT_GRACE_SECONDS, GRACE_ENV, RELAY_MARGIN_SECONDS
from nst_engine.errors import NSTError

REPO = Path(__file__).resolve().parents[1]
YAML_FILES = sorted(
    p for folder in ("cluster", "jobs") for p in (REPO / folder).rglob("*") if p.suffix in (".yaml", ".yml")
)
SHELL_SCRIPTS = [REPO / "cluster" / "local-cluster.sh", REPO / "jobs" / "run-nightly.sh"]


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in documents(path)}


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def gpu_limit(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_yaml_files_exist() -> None:
    names = {p.relative_to(REPO).as_posix() for p in YAML_FILES}
    assert {
        "cluster/aws-gpu.yaml",
        "cluster/kuberay-raycluster.yaml",
        "jobs/nightly.yaml",
        "jobs/kubernetes-rayjob.yaml",
        "jobs/kubernetes-cronjob.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def check_ray_cluster_spec(spec: dict) -> None:
    """Head does no rendering; a GPU worker group with one GPU per pod that scales from
    zero (renders request GPU workers, the autoscaler adds pods); token auth."""
    head = spec["headGroupSpec"]
    assert str(head["rayStartParams"]["num-cpus"]) == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    groups = spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any(gpu_limit(c) == 1 for c in containers(g["template"]))]
    assert gpu_groups, "no worker group with an nvidia.com/gpu: 1 limit"
    for group in gpu_groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1, "GPU pods only while a render runs"
    assert spec.get("enableInTreeAutoscaling") is True, "nothing would add GPU pods"
    images = {c["image"] for c in containers(head["template"])}
    images |= {c["image"] for g in groups for c in containers(g["template"])}
    assert len(images) == 1, f"head and workers must run the same image, got {images}"
    token_by_option = spec.get("authOptions", {}).get("mode") == "token"
    pods = [head["template"], *(g["template"] for g in groups)]
    token_by_env = all(
        {"name": "RAY_AUTH_MODE", "value": "token"} in c.get("env", []) for p in pods for c in containers(p)
    )
    assert token_by_option or token_by_env, "token authentication is not on"


def test_kuberay_raycluster() -> None:
    kinds = by_kind(REPO / "cluster" / "kuberay-raycluster.yaml")
    assert set(kinds) == {"RayCluster"}
    cluster = kinds["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    # jobs/kubernetes-cronjob.yaml submits to raycluster-head-svc: KubeRay names it NAME-head-svc
    assert cluster["metadata"]["name"] == "raycluster"
    check_ray_cluster_spec(cluster["spec"])


def test_kuberay_rayjob() -> None:
    kinds = by_kind(REPO / "jobs" / "kubernetes-rayjob.yaml")
    assert set(kinds) == {"RayJob"}
    job = kinds["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["nst", "render"]
    assert words[words.index("--address") + 1] == "auto"
    assert words[words.index("--output") + 1].startswith("s3://")
    assert "--quiet" in words
    assert "--gpus" in words  # GPU workers, waiting for the autoscaler's pods: never a CPU run
    check_ray_cluster_spec(job["spec"]["rayClusterSpec"])


def test_kubernetes_cronjob() -> None:
    kinds = by_kind(REPO / "jobs" / "kubernetes-cronjob.yaml")
    assert set(kinds) == {"CronJob", "ConfigMap"}
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = containers(pod)
    command = container["command"]
    assert command[:3] == ["nst", "submit", "/jobs/nightly.yaml"]
    assert command[command.index("--address") + 1] == "http://raycluster-head-svc:8265"
    # the job file is the ConfigMap's, mounted at /jobs
    config_map = kinds["ConfigMap"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/jobs")
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    job_file = yaml.safe_load(config_map["data"]["nightly.yaml"])
    assert Path(job_file["manifest"]).is_absolute()
    assert job_file["address"] == "http://raycluster-head-svc:8265"


def test_kubernetes_cronjob_job_file_loads(tmp_path: Path) -> None:
    """The ConfigMap's job file is one load_job accepts (manifest moved to where it exists)."""
    config_map = by_kind(REPO / "jobs" / "kubernetes-cronjob.yaml")["ConfigMap"]
    data = yaml.safe_load(config_map["data"]["nightly.yaml"])
    data["manifest"] = str(REPO / "manifests" / "demo.yaml")
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(data))
    job = load_job(path)
    assert job.output == data["output"]
    assert "--gpus" in job.render_args


def test_nightly_job_file() -> None:
    path = REPO / "jobs" / "nightly.yaml"
    assert is_job_file(path)
    job = load_job(path)
    assert Path(job.manifest) == (REPO / "manifests" / "demo.yaml").resolve()
    assert job.address == "http://127.0.0.1:8265"
    command = entrypoint(job)
    assert command.startswith("nst render ")
    assert "--address auto" in command
    words = shlex.split(command)
    assert words[words.index("--output") + 1] == job.output
    assert "--force" not in words, "the nightly job must skip finished items"
    for option in ("--max-attempts", "--max-worker-failures", "--threads-per-actor"):
        assert option in words


def test_aws_cluster_launcher_config() -> None:
    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    gpu_workers = [t for t in workers if t["resources"].get("GPU") == 1]
    assert gpu_workers
    assert all(t["min_workers"] == 0 for t in gpu_workers), "GPU nodes only while a render runs"
    for worker in workers:
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["docker"]["run_options"])


def test_aws_cluster_launcher_config_validates() -> None:
    """Ray's own schema check of `ray up` (defaults merged in, nothing launched)."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    util.validate_config(util.prepare_config(config))


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_systemd_units() -> None:
    timer = read_unit(REPO / "jobs" / "systemd" / "nst-render.timer")
    assert timer["Timer"]["OnCalendar"]
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["Unit"] == "nst-render.service"
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = read_unit(REPO / "jobs" / "systemd" / "nst-render.service")
    assert service["Service"]["Type"] == "oneshot"
    assert "jobs/run-nightly.sh" in service["Service"]["ExecStart"]


def test_systemd_calendar_is_valid() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    calendar = read_unit(REPO / "jobs" / "systemd" / "nst-render.timer")["Timer"]["OnCalendar"]
    result = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_cron_example() -> None:
    lines = [
        line
        for line in (REPO / "jobs" / "cron.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and "=" not in line.split()[0]
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert len(fields) == 6
    command = fields[5]
    assert "flock -n" in command
    assert "jobs/nightly.yaml" in command
    assert ">>" in command and "2>&1" in command
    assert "%" not in command, "cron turns an unescaped % into a newline"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shell_scripts_parse(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_local_cluster_usage() -> None:
    """No arguments: the usage text and exit status 2, nothing started."""
    script = REPO / "cluster" / "local-cluster.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "local-cluster.sh start" in result.stdout


def test_dockerfile_installs_with_constraints() -> None:
    text = (REPO / "cluster" / "Dockerfile").read_text()
    assert "pip install -c constraints.txt ." in text
    assert "COPY manifests /data/manifests" in text
    ignored = (REPO / "cluster" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored


def test_job_file_worker_pool_and_checkpoint_keys(tmp_path: Path) -> None:
    """A job file reaches every pool option of nst render; an unknown workers key is named."""
    manifest = REPO / "manifests" / "demo.yaml"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"manifest: {manifest}\nworkers: {{count: '0:4', start_timeout: 30, gpus: true}}\n"
        "checkpoint_every: 120\n"
    )
    args = load_job(job).render_args
    assert args[args.index("--workers") + 1] == "0:4"
    assert args[args.index("--worker-start-timeout") + 1] == "30"
    assert args[args.index("--checkpoint-every") + 1] == "120" and "--gpus" in args
    job.write_text(f"manifest: {manifest}\nworkers: {{cuont: 2}}\n")
    with pytest.raises(NSTError, match=r"workers\.cuont: unknown field; use count"):
        load_job(job)


# ---------------------------------------------------------------- sharing a cluster (Kueue)
# No JSON schema of Kueue's CRDs is installed here (they ship as Go code and YAML in its
# release manifests, not in any PyPI or npm package), so the checks below read the fields
# Kueue's v1beta1 API requires and the references between the files by hand.

KUEUE = REPO / "cluster" / "kueue-queues.yaml"
KUEUE_API = "kueue.x-k8s.io/v1beta1"
RAYJOB = REPO / "jobs" / "kubernetes-rayjob.yaml"


def kueue_objects(kind: str) -> dict[str, dict]:
    """The ``kind`` objects of cluster/kueue-queues.yaml by name."""
    return {d["metadata"]["name"]: d for d in documents(KUEUE) if d["kind"] == kind}


def quantity(text: str | int) -> float:
    """A Kubernetes quantity as a number (the suffixes these files use)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3}
    text = str(text)
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


def test_kueue_queues_are_whole() -> None:
    """Every object has Kueue's API version; the ClusterQueue's flavors exist and give a
    quota for each covered resource, a GPU quota among them; each LocalQueue names it."""
    docs = documents(KUEUE)
    assert {d["kind"] for d in docs} == {
        "ResourceFlavor",
        "ClusterQueue",
        "LocalQueue",
        "WorkloadPriorityClass",
    }
    assert all(d["apiVersion"] == KUEUE_API for d in docs)
    flavors, queues = kueue_objects("ResourceFlavor"), kueue_objects("ClusterQueue")
    for queue in queues.values():
        for group in queue["spec"]["resourceGroups"]:
            for flavor in group["flavors"]:
                assert flavor["name"] in flavors, flavor["name"]
                assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]
    gpus = [
        quantity(r["nominalQuota"])
        for q in queues.values()
        for g in q["spec"]["resourceGroups"]
        for f in g["flavors"]
        for r in f["resources"]
        if r["name"] == "nvidia.com/gpu"
    ]
    assert gpus and min(gpus) >= 1
    local = kueue_objects("LocalQueue")
    assert len(local) >= 2, "one LocalQueue per team"
    for name, queue in local.items():
        assert queue["metadata"]["namespace"], name
        assert queue["spec"]["clusterQueue"] in queues, name
    priorities = kueue_objects("WorkloadPriorityClass")
    assert {"nightly", "interactive"} <= set(priorities)
    assert all(isinstance(p["value"], int) for p in priorities.values())
    assert priorities["interactive"]["value"] > priorities["nightly"]["value"]


def test_rayjob_is_queued_by_kueue() -> None:
    """The RayJob names a LocalQueue and a WorkloadPriorityClass that kueue-queues.yaml
    defines, and is created suspended, as Kueue requires of a RayJob, which must also end
    its cluster with the job and not run on an existing one (clusterSelector)."""
    job = by_kind(RAYJOB)["RayJob"]
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] in kueue_objects("LocalQueue")
    assert labels["kueue.x-k8s.io/priority-class"] in kueue_objects("WorkloadPriorityClass")
    assert job["spec"]["suspend"] is True
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert "clusterSelector" not in job["spec"]


def rayjob_gpu_groups(job: dict) -> list[dict]:
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return [g for g in groups if any(gpu_limit(c) for c in containers(g["template"]))]


def test_rayjob_worker_cap_agrees_with_its_pods() -> None:
    """The render's own cap (--workers MIN:MAX in the entrypoint) is the GPU workers its
    pods can hold: maxReplicas × GPUs per pod × --workers-per-gpu; a larger MAX would
    leave requests pending forever, a smaller one idle GPU pods held in the quota."""
    from nst_engine.distributed.options import parse_workers

    job = by_kind(RAYJOB)["RayJob"]
    words = shlex.split(job["spec"]["entrypoint"])
    _, most = parse_workers(words[words.index("--workers") + 1])
    per_gpu = int(words[words.index("--workers-per-gpu") + 1]) if "--workers-per-gpu" in words else 1
    gpus = sum(
        group["maxReplicas"] * max(gpu_limit(c) for c in containers(group["template"]))
        for group in rayjob_gpu_groups(job)
    )
    assert most == gpus * per_gpu


def test_rayjob_fits_its_cluster_queue() -> None:
    """At its largest (every GPU group at maxReplicas, plus the head) the render's pods
    request no more than the ClusterQueue behind its LocalQueue can ever give; a job
    larger than the quota would wait for good."""
    job = by_kind(RAYJOB)["RayJob"]
    local = kueue_objects("LocalQueue")[job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]]
    queue = kueue_objects("ClusterQueue")[local["spec"]["clusterQueue"]]
    quota: dict[str, float] = {}
    for group in queue["spec"]["resourceGroups"]:
        for flavor in group["flavors"]:
            for resource in flavor["resources"]:
                quota[resource["name"]] = quota.get(resource["name"], 0) + quantity(resource["nominalQuota"])
    spec = job["spec"]["rayClusterSpec"]
    pods = [(1, spec["headGroupSpec"]["template"])]
    pods += [(g["maxReplicas"], g["template"]) for g in spec["workerGroupSpecs"]]
    wanted: dict[str, float] = {}
    for count, template in pods:
        for container in containers(template):
            for name, value in container.get("resources", {}).get("requests", {}).items():
                wanted[name] = wanted.get(name, 0) + count * quantity(value)
    for name, value in wanted.items():
        assert name in quota, f"the ClusterQueue covers no {name}: Kueue would never admit the job"
        assert value <= quota[name], name


def test_prometheus_scrapes_rays_service_discovery_file() -> None:
    """cluster/prometheus.yml reads the file Ray's head writes its nodes' metrics
    addresses to (Ray's own name for it), and parses as a Prometheus configuration."""
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((REPO / "cluster" / "prometheus.yml").read_text())
    assert set(config) <= {"global", "scrape_configs", "rule_files", "alerting"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


# --- preemption: the render workers save before a node goes (issue 20) ------------------


def gpu_worker_pods() -> list[tuple[str, dict]]:
    """(file, pod template) of every Kubernetes GPU worker group."""
    specs = [
        (
            "cluster/kuberay-raycluster.yaml",
            by_kind(REPO / "cluster" / "kuberay-raycluster.yaml")["RayCluster"]["spec"],
        ),
        (
            "jobs/kubernetes-rayjob.yaml",
            by_kind(REPO / "jobs" / "kubernetes-rayjob.yaml")["RayJob"]["spec"]["rayClusterSpec"],
        ),
    ]
    return [(name, group["template"]) for name, spec in specs for group in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name,pod", gpu_worker_pods(), ids=lambda v: v if isinstance(v, str) else "")
def test_worker_pods_relay_the_stop_and_wait_for_it(name: str, pod: dict) -> None:
    """preStop tells the render workers to save (``ray start``, PID 1, would kill them at
    once), and the pod's grace period outlasts the workers' and the relay's wait."""
    (container,) = containers(pod)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-m"] and importlib.util.find_spec(command[2]) is not None, command
    assert command[2] == "nst_engine.distributed.preemption"
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    grace = float(env.get(GRACE_ENV) or DEFAULT_GRACE_SECONDS)  # one default: the module's
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace + RELAY_MARGIN_SECONDS + 5, name


def test_aws_spot_notice_is_started_on_workers() -> None:
    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    remote = {dst: src for dst, src in config["file_mounts"].items() if src.endswith("spot-notice.sh")}
    (destination,) = remote
    assert (REPO / remote[destination]).is_file()
    assert any(destination in command for command in config["worker_setup_commands"])
    result = subprocess.run(
        ["sh", "-n", str(REPO / "cluster" / "spot-notice.sh")], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_spot_notice_relays_once_the_instance_action_appears(tmp_path: Path) -> None:
    """Against a stand-in for the instance metadata (IMDSv2: a token by PUT, then the
    spot action with it): nothing while there is no action, the relay once there is."""
    if shutil.which("wget") is None:
        pytest.skip("wget not installed")
    state = {"action": False, "polls": 0}

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self._answer(200 if self.path == "/latest/api/token" else 404, b"tok")

        def do_GET(self) -> None:
            ok = self.path == "/latest/meta-data/spot/instance-action"
            ok = ok and self.headers.get("X-aws-ec2-metadata-token") == "tok"
            state["polls"] += 1
            self._answer(200 if ok and state["action"] else 404, b'{"action": "terminate"}')

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relayed = tmp_path / "relayed"
    env = {
        **os.environ,
        "NST_IMDS_URL": f"http://127.0.0.1:{server.server_port}/latest",
        "NST_SPOT_RELAY": f"touch {relayed}",
        "NST_SPOT_POLL_SECONDS": "0.1",
    }
    script = subprocess.Popen(
        ["sh", str(REPO / "cluster" / "spot-notice.sh")], env=env, stdout=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while state["polls"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state["polls"] >= 3 and not relayed.exists() and script.poll() is None
        state["action"] = True
        assert script.wait(timeout=30) == 0
    finally:
        script.kill()
        server.shutdown()
    assert relayed.exists()
