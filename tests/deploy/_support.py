"""Helpers for the deployment tests: tool lookup, a throw-away CA and certificate, the nginx config templated
for loopback, free ports (``coordinator.process.free_port``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.process import free_port as free_port  # re-exported for the deploy tests
from tests.support.services import missing_service

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"


def tool(name: str) -> str:
    """Path of a CLI tool from the project's venv or PATH. The Debian tools (nginx, openssl) that
    scripts/test-services.sh could not install skip the test (fail it under CI=true); a missing venv tool fails."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None and name in ("nginx", "openssl"):
        missing_service(name, "not on PATH nor in /usr/sbin; Debian packages nginx-light, openssl")
    if found is None:
        pytest.fail(f"{name} is not installed (see the pyproject.toml dev extra)")
    return found


def run_tool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it, made with the openssl CLI."""
    openssl = tool("openssl")
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "tls.key", directory / "tls.csr", directory / "tls.crt"
    ext = directory / "san.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    steps = [
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", ca_key, "-out", ca_cert, "-days", "2", "-subj", "/CN=mfcpl test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ]
    for step in steps:
        done = subprocess.run([str(a) for a in step], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    return Pki(ca_cert=ca_cert, server_cert=cert, server_key=key)


def render_nginx_conf(upstreams: list[str], https_port: int, http_port: int, pki: Pki, temp_dir: Path) -> str:
    """The shipped nginx.conf with only the upstream servers, listen ports, certificate and temp paths replaced.

    Every other directive (body size, buffering, timeouts, headers) is exercised exactly as shipped.
    """
    text = NGINX_CONF.read_text()

    def swap(pattern: str, replacement: str, count: int = 1) -> None:
        nonlocal text
        text, n = re.subn(pattern, lambda _m: replacement, text, flags=re.MULTILINE)
        assert n == count, f"nginx.conf no longer has {pattern!r} {count} time(s); update the test template"

    swap(r"^(\s*)server coordinator:8000 (.*);$",
         "\n".join(f"        server {u} max_fails=3 fail_timeout=10s;" for u in upstreams))
    swap(r"^\s*listen 443 ssl http2;$", f"        listen 127.0.0.1:{https_port} ssl http2;")
    swap(r"^\s*listen \[::\]:443 ssl http2;$", "")
    swap(r"^\s*listen 80;$", f"        listen 127.0.0.1:{http_port};")
    swap(r"^\s*listen \[::\]:80;$", "")
    swap(r"/etc/nginx/certs/tls\.crt", str(pki.server_cert))
    swap(r"/etc/nginx/certs/tls\.key", str(pki.server_key))
    swap(r"/tmp/nginx/", f"{temp_dir}/", count=5)
    swap(r"/dev/stdout", str(temp_dir / "access.log"))
    return text


def nginx_command(conf: Path, prefix: Path) -> list[str]:
    return [tool("nginx"), "-p", str(prefix), "-c", str(conf), "-g", f"daemon off; pid {prefix / 'nginx.pid'};"]
