"""Static checks of deploy/: linters, schema validation, compose references, nginx syntax, settings agreement.

The linters come with the `dev` extra (a missing one fails); nginx and openssl from scripts/test-services.sh.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._support import DEPLOY, NGINX_CONF, REPO, make_pki, nginx_command, render_nginx_conf, run_tool, tool

DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.client"]
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
K8S_RESOURCES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
MAX_UPDATE_BYTES = 256 * 1024 * 1024


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    lines = (line.strip() for line in (DEPLOY / "env.example").read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return dict(pairs)


def _interpolate_defaults(value: str) -> str:
    """Resolve compose's ${VAR:-default} to its default (the path the repository ships)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_accepts_dockerfile(dockerfile: Path) -> None:
    done = run_tool(tool("hadolint"), "--failure-threshold", "info", str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_known_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install fastapi\n")
    done = run_tool(tool("hadolint"), str(bad))
    assert done.returncode != 0 and "DL3007" in done.stdout


def test_dockerfiles_build_from_the_repo_root_with_the_files_they_copy() -> None:
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from=" not in line:
                sources = [a for a in line.split()[1:-1] if not a.startswith("--")]
                for source in sources:
                    assert (REPO / source).exists(), f"{dockerfile.name}: COPY source {source} is missing"
                    assert _not_excluded_by_dockerignore(dockerfile, source), f"{source} is in .dockerignore"


def _not_excluded_by_dockerignore(dockerfile: Path, source: str) -> bool:
    rules = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    kept = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    return source.rstrip("/") in kept


def test_coordinator_image_has_no_torch_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert '".[server]"' in text and "torch" not in text.split("FROM")[1]
    assert re.search(r"^USER \$\{APP_UID\}", text, flags=re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["/opt/mfcpl/start.sh"]' in text


def test_shellcheck_accepts_start_script() -> None:
    done = run_tool(tool("shellcheck"), "--shell=sh", str(DEPLOY / "start.sh"))
    assert done.returncode == 0, done.stdout


def test_yamllint_accepts_compose_k8s_and_prometheus() -> None:
    targets = [COMPOSE, K8S, DEPLOY / "prometheus", DEPLOY / ".yamllint"]
    done = run_tool(tool("yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint"), *map(str, targets))
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    assert {p.name for p in K8S_RESOURCES} >= {
        "deployment.yaml", "service.yaml", "ingress.yaml", "configmap.yaml", "secret.example.yaml",
        "migrate-job.yaml", "pdb.yaml",
    }
    done = run_tool(tool("kubernetes-validate"), "--strict", "--quiet", *map(str, K8S_RESOURCES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path: Path) -> None:
    broken = yaml.safe_load((K8S / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = ["http"]
    target = tmp_path / "broken.yaml"
    target.write_text(yaml.safe_dump(broken))
    done = run_tool(tool("kubernetes-validate"), "--strict", "--quiet", str(target))
    assert done.returncode != 0


def test_kustomization_lists_existing_resources_and_not_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_deployment_probes_and_resources() -> None:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert grace > int(config["MFCPL_GRACEFUL_SHUTDOWN_S"]) + 5
    pdb = yaml.safe_load((K8S / "pdb.yaml").read_text())
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"]


def test_compose_parses_and_references_only_existing_files() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "coordinator", "proxy", "prometheus"} <= set(services)
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build["dockerfile"]).is_file(), f"{name}: dockerfile {build['dockerfile']}"
        for env_file in service.get("env_file", []):
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            # deploy/.env is the operator's copy of env.example; the repository ships the example.
            shipped = DEPLOY / ("env.example" if path == ".env" else path)
            assert shipped.is_file(), f"{name}: env file {path}"
        for volume in service.get("volumes", []):
            source = _interpolate_defaults(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: mounted path {source} is missing"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"


def test_compose_secrets_come_from_the_env_file_only() -> None:
    text = COMPOSE.read_text()
    env = _env_example()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert required == {"POSTGRES_PASSWORD"}
    assert required <= set(env)
    assert "MFCPL_ADMIN_TOKEN" in env and "MFCPL_ADMIN_TOKEN" not in text
    assert not re.search(r"(PASSWORD|TOKEN)\s*[:=]\s*[\"']?[A-Za-z0-9]{8,}", text), "a secret is baked into compose"


def test_compose_runs_two_replicas_sharing_database_and_blobs() -> None:
    services = _compose()["services"]
    coordinator = services["coordinator"]
    assert coordinator["deploy"]["replicas"] == 2
    assert "ports" not in coordinator, "replicas must only be reachable through the proxy"
    assert coordinator["environment"]["MFCPL_BLOB_STORE"] == "db"
    assert coordinator["environment"]["MFCPL_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["postgres"]["healthcheck"]["test"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_body_size_limit_agrees_everywhere() -> None:
    nginx_limit = re.search(r"client_max_body_size (\d+)m;", NGINX_CONF.read_text())
    assert nginx_limit and int(nginx_limit.group(1)) * 1024 * 1024 == MAX_UPDATE_BYTES
    assert int(_env_example()["MFCPL_MAX_UPDATE_BYTES"]) == MAX_UPDATE_BYTES
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert int(config["MFCPL_MAX_UPDATE_BYTES"]) == MAX_UPDATE_BYTES
    ingress = yaml.safe_load((K8S / "ingress.yaml").read_text())
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "256m"
    assert "MFCPL_MAX_UPDATE_BYTES:=268435456" in (DEPLOY / "start.sh").read_text()


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(["127.0.0.1:9"], 18443, 18080, pki, tmp_path))
    done = run_tool(*nginx_command(conf, tmp_path)[:-2], "-t", "-g", f"pid {tmp_path / 'nginx.pid'};")
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr
