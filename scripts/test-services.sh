#!/usr/bin/env bash
# Brings up what the test suite needs besides the virtual environment (`make test` runs this before pytest):
#
#   PostgreSQL at 127.0.0.1:5432 with the database `test`: started when a cluster is installed but down
#     (pg_ctlcluster), then waited for; the database is created when missing. Nothing is installed.
#   nginx and openssl (the TLS-proxy and nginx-config tests): installed with apt-get (Debian's nginx-light
#     and openssl) when missing and this runs as root with apt-get.
#   Chromium (the browser tests of /docs, /redoc and the /ui/ dashboard, driven by Playwright from the dev extra):
#     Debian's chromium, installed the same way.
#
# What it cannot provide it names, and it still exits 0: the tests that need it are then skipped with a reason
# naming the missing piece, except under CI=true, where they fail. CHECK_ONLY=1 only reports, changing nothing.
set -uo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
PG_WAIT_S=${PG_WAIT_S:-30}
CHECK_ONLY=${CHECK_ONLY:-0}
missing=()

say() { printf 'test-services: %s\n' "$*" >&2; }

postgres_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -h "$PG_HOST" -p "$PG_PORT" -q 2>/dev/null
  else  # no client tools: is anything listening?
    (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
  fi
}

# The installed cluster that listens on PG_PORT, as "VERSION NAME" (Debian's postgresql-common layout).
postgres_cluster() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  pg_lsclusters --no-header 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2; found = 1; exit }
    END { exit !found }'
}

ensure_postgres() {
  if postgres_up; then
    say "PostgreSQL: running at $PG_HOST:$PG_PORT"
  else
    local cluster
    if ! cluster=$(postgres_cluster); then
      say "PostgreSQL: not running at $PG_HOST:$PG_PORT and no cluster on port $PG_PORT is installed"
      missing+=("PostgreSQL at $PG_HOST:$PG_PORT")
      return
    fi
    if [ "$CHECK_ONLY" = 1 ]; then
      say "PostgreSQL: cluster $cluster is installed but down (CHECK_ONLY=1: not starting it)"
      missing+=("PostgreSQL at $PG_HOST:$PG_PORT")
      return
    fi
    say "PostgreSQL: starting cluster $cluster"
    # shellcheck disable=SC2086  # "VERSION NAME": two arguments
    pg_ctlcluster --skip-systemctl-redirect $cluster start || say "PostgreSQL: pg_ctlcluster $cluster start failed"
    local waited=0
    until postgres_up || [ "$waited" -ge "$PG_WAIT_S" ]; do
      sleep 1
      waited=$((waited + 1))
    done
    if ! postgres_up; then
      say "PostgreSQL: still not answering at $PG_HOST:$PG_PORT after ${PG_WAIT_S}s"
      missing+=("PostgreSQL at $PG_HOST:$PG_PORT")
      return
    fi
    say "PostgreSQL: running at $PG_HOST:$PG_PORT"
  fi
  # The tests connect as postgres to the database `test` (trust auth) and create their own databases from it.
  if command -v psql >/dev/null 2>&1; then
    local has_test
    has_test=$(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null)
    if [ "$has_test" != 1 ] && [ "$CHECK_ONLY" != 1 ]; then
      say "PostgreSQL: creating the database test"
      psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc 'CREATE DATABASE test' \
        || say "PostgreSQL: could not create the database test (the Postgres tests will say why)"
    fi
  fi
}

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
have_openssl() { command -v openssl >/dev/null 2>&1; }

# apt_install WHAT ARGS...: `apt-get install ARGS` where this machine allows it; `why` says why it did not.
why=""
apt_install() {
  local what=$1
  shift
  why=""
  if [ "$CHECK_ONLY" = 1 ]; then
    why="CHECK_ONLY=1"
  elif [ "$(id -u)" != 0 ]; then
    why="not root"
  elif ! command -v apt-get >/dev/null 2>&1; then
    why="no apt-get on this machine"
  else
    say "$what: installing with apt-get install $*"
    if ! apt-get update -qq; then
      why="apt-get update failed"
    elif ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; then
      why="apt-get install $* failed"
    fi
  fi
}

ensure_nginx_openssl() {
  if have_nginx && have_openssl; then
    say "nginx and openssl: installed"
    return
  fi
  apt_install "nginx and openssl" --no-install-recommends nginx-light openssl
  have_nginx || missing+=("nginx")
  have_openssl || missing+=("openssl")
  if have_nginx && have_openssl; then
    say "nginx and openssl: installed"
  else
    say "nginx and openssl: cannot install them (${why:-installed packages give no nginx/openssl}); install" \
      "nginx-light and openssl yourself"
  fi
}

have_chromium() { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; }

ensure_chromium() {
  if have_chromium; then
    say "chromium: installed"
    return
  fi
  apt_install chromium chromium
  if have_chromium; then
    say "chromium: installed"
  else
    missing+=("chromium")
    say "chromium: cannot install it (${why:-the package gives no chromium}); install Debian's chromium yourself"
  fi
}

ensure_postgres
ensure_nginx_openssl
ensure_chromium

if [ "${#missing[@]}" -eq 0 ]; then
  say "everything the tests need is here"
else
  joined=$(printf '%s, ' "${missing[@]}")
  joined=${joined%, }
  if [[ "${CI:-}" =~ ^([Tt][Rr][Uu][Ee]|1)$ ]]; then
    say "MISSING: $joined. CI=true: the tests that need it will FAIL."
  else
    say "MISSING: $joined. The tests that need it will be skipped, each naming what is missing."
  fi
fi
exit 0
