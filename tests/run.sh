#!/usr/bin/env bash
# The test command (README): builds everything and runs every test of the workspace —
# unit, store (SQLite and PostgreSQL), admin API, data plane, and the end-to-end scenarios
# over real processes, including the official openai SDKs for Python (two versions) and Node
# against the gateway and the Admin Console in headless Chromium; the Grafana dashboard against
# Grafana's schema; the deployment files (image definitions, Kubernetes manifests) against
# theirs; then schemathesis holds the admin API of a real control plane to its OpenAPI document.
#
# Needs: PostgreSQL on 127.0.0.1:5432 (trust auth; override with MODELGW_TEST_POSTGRES_URL) and
# python3 with venv (the openai SDKs and schemathesis are installed into cached virtualenvs);
# chromium and chromium-driver are installed with apt-get when missing, as are node and npm
# (the Node openai SDK and the dashboard's schema check are installed into cached npm prefixes).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/modelgw/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
CACHE="${MODELGW_CACHE:-$HOME/.cache/modelgw}"
OPENAI_SDK_VERSION="3.57.0" # the SDK version the mocks' wire shapes were checked against
# The newest releases when the SDK surface test (tests/e2e/tests/sdk.rs) was written: what a new
# user installs today, pinned so a run is reproducible. Raise them deliberately.
OPENAI_SDK_LATEST_VERSION="3.63.0"
OPENAI_NODE_SDK_VERSION="7.60.0"

# PostgreSQL: the store tests run on it as well as SQLite, and fail (never skip) without it.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi

# The official openai Python SDK, each version in a virtualenv of its own: the pinned one and
# the latest (tests/e2e/tests/sdk.rs runs the same script with both).
python_openai() {
  local venv="$CACHE/venv-openai-$1"
  if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$1')" 2>/dev/null; then
    echo "installing openai==$1 into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$1" >&2
  fi
  echo "$venv/bin/python"
}
MODELGW_PYTHON="$(python_openai "$OPENAI_SDK_VERSION")"
MODELGW_PYTHON_LATEST="$(python_openai "$OPENAI_SDK_LATEST_VERSION")"
export MODELGW_PYTHON MODELGW_PYTHON_LATEST

# The official openai Node SDK (run by `node`, which the Grafana check below also needs), in an
# npm prefix of its own; tests/e2e/node/sdk_surface.mjs imports it from there.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
MODELGW_NODE_OPENAI="$CACHE/node-openai-$OPENAI_NODE_SDK_VERSION"
if [ "$(node -p "require('$MODELGW_NODE_OPENAI/node_modules/openai/package.json').version" 2>/dev/null)" != "$OPENAI_NODE_SDK_VERSION" ]; then
  echo "installing openai@$OPENAI_NODE_SDK_VERSION (npm) into $MODELGW_NODE_OPENAI"
  mkdir -p "$MODELGW_NODE_OPENAI"
  npm install --prefix "$MODELGW_NODE_OPENAI" --no-audit --no-fund --no-save --loglevel=error \
    "openai@$OPENAI_NODE_SDK_VERSION"
fi
export MODELGW_NODE_OPENAI

# Headless Chromium and its WebDriver for the Admin Console's browser tests
# (tests/e2e/tests/console.rs); Debian's packages, matched versions.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing chromium and chromium-driver"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

# The Grafana dashboard (deploy/grafana/) against Grafana's own schema; a few seconds.
bash tests/grafana/run.sh

# The image definitions and the Kubernetes manifests (deploy/): hadolint, every overlay rendered
# and validated against the Kubernetes schemas in strict mode, the security rules, a self-test
# that typos fail; seconds once its virtualenv exists. See tests/deploy/run.sh.
bash tests/deploy/run.sh

# cargo-nextest runs the scenarios as .config/nextest.toml says (the process-level ones one at a
# time); `cargo test` would run them all at once and measure contention, not the gateway. Install
# it into a cached root when missing, never fall back.
TOOLS="$CACHE/tools"
export PATH="$TOOLS/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest into $TOOLS"
  if ! cargo install --locked --root "$TOOLS" cargo-nextest || ! cargo nextest --version >/dev/null 2>&1; then
    echo "error: cargo-nextest is required (the scenario tests rely on its per-test settings in" >&2
    echo "       .config/nextest.toml) and could not be installed into $TOOLS;" >&2
    echo "       install it with: cargo install --locked cargo-nextest" >&2
    exit 1
  fi
fi
cargo nextest run --workspace --locked --no-fail-fast "$@"
# nextest does not run doctests.
cargo test --workspace --locked --doc

# The admin API against its OpenAPI document (every check, stateful phase included), on the
# binary the tests above built; about half a minute. See tests/schemathesis/run.sh.
cargo build --locked -p modelgw
bash tests/schemathesis/run.sh "$CARGO_TARGET_DIR/debug/modelgw"
