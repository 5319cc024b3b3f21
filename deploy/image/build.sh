#!/usr/bin/env bash
# Builds the modelgw container image where no base image can be pulled: assembles a root
# filesystem FROM scratch out of a release binary and runs `podman build` on
# deploy/image/Containerfile (the same image as deploy/Dockerfile: non-root uid 65532,
# `modelgw` entrypoint, OCI labels, nothing to write outside /var/lib/modelgw and /tmp).
# Then checks what it built: the image's user, entrypoint and labels (podman image inspect),
# its file ownership, that the binary starts from the image's own filesystem as the non-root
# user, and that a control plane runs on it read-only but for /tmp and /var/lib/modelgw
# (chroot into the exported image: containers cannot run on this machine).
#
#   deploy/image/build.sh [--binary PATH] [--tag NAME] [--keep-rootfs DIR] [--assemble-only DIR]
#
# --keep-rootfs DIR keeps the image's exported filesystem there; --assemble-only DIR only lays
# out the build context in DIR (no podman; tests/deploy/run.sh checks the Containerfile's COPY
# sources against it).
# --binary defaults to $CARGO_TARGET_DIR/release/modelgw (what bench/run.sh builds), --tag to
# localhost/modelgw:<version>-<short commit>. podman is installed with apt-get when missing;
# MODELGW_IMAGE_REQUIRED=0 turns "podman cannot be installed" into a loud skip (exit 0).
set -euo pipefail

BINARY="${CARGO_TARGET_DIR:-$HOME/.cache/modelgw/target}/release/modelgw"
TAG=""
KEEP=""
ASSEMBLE_ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --keep-rootfs) KEEP="$2"; shift 2 ;;
    --assemble-only) ASSEMBLE_ONLY="$2"; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--tag NAME] [--keep-rootfs DIR] [--assemble-only DIR]" >&2; exit 2 ;;
  esac
done

fail() { echo "image: FAIL: $*" >&2; exit 1; }

[ -x "$BINARY" ] && [ -f "$BINARY" ] || fail "no executable at $BINARY (build it: cargo build --release -p modelgw)"
# Paths as the caller gave them, then work from the repository root.
BINARY="$(realpath "$BINARY")"
[ -z "$KEEP" ] || KEEP="$(realpath -m "$KEEP")"
[ -z "$ASSEMBLE_ONLY" ] || ASSEMBLE_ONLY="$(realpath -m "$ASSEMBLE_ONLY")"
cd "$(dirname "$0")/../.."

# The CA bundle every TLS client of the binary reads (rustls native roots).
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$CA_BUNDLE" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null
fi

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)" +%Y-%m-%dT%H:%M:%SZ)"
[ -n "$TAG" ] || TAG="localhost/modelgw:${VERSION}-${REVISION:0:12}"

WORK="$(mktemp -d)"
cleanup() {
  podman rm -f "modelgw-image-check-$$" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ROOT="$WORK/rootfs"

# --- the root filesystem -----------------------------------------------------------------
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/etc/ssl/certs" "$ROOT/var/lib"
install -d -m 1777 "$ROOT/tmp"
install -d -m 0755 "$WORK/data/modelgw"
# Without the release profile's line tables (a sixth of the size; symbols stay for backtraces).
if command -v strip >/dev/null; then
  strip --strip-debug -o "$ROOT/usr/local/bin/modelgw" "$BINARY"
  chmod 0755 "$ROOT/usr/local/bin/modelgw"
else
  echo "image: strip (binutils) not found: the binary keeps its debug line tables" >&2
  install -m 0755 "$BINARY" "$ROOT/usr/local/bin/modelgw"
fi
# The shared libraries the binary loads, at the paths the dynamic loader looks them up by
# (symlinks resolved: the file itself under the name ldd printed), the loader included.
LIBS="$(ldd "$BINARY" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]+ \(0x/{print $1}')"
[ -n "$LIBS" ] || fail "ldd found no libraries in $BINARY (a static binary needs no rootfs libraries: adjust this script)"
for lib in $LIBS; do
  install -d -m 0755 "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
# glibc's Debian layout also looks in /lib64 and /usr/lib/x86_64-linux-gnu through the
# merged-/usr symlinks; keep the loader where the ELF header names it.
INTERP="$(readelf -l "$BINARY" 2>/dev/null | sed -n 's/.*interpreter: \(.*\)]/\1/p')"
if [ -n "$INTERP" ] && [ ! -e "$ROOT$INTERP" ]; then
  install -d -m 0755 "$ROOT$(dirname "$INTERP")"
  cp -L "$INTERP" "$ROOT$INTERP"
fi
cp -L "$CA_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt"
# The non-root user (distroless's `nonroot`, uid/gid 65532) and name resolution as glibc
# expects it (files, then DNS).
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/var/lib/modelgw:/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
printf 'hosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOT/etc/hosts"
cp deploy/image/Containerfile "$WORK/Containerfile"

if [ -n "$ASSEMBLE_ONLY" ]; then
  rm -rf "$ASSEMBLE_ONLY" && cp -a "$WORK" "$ASSEMBLE_ONLY"
  echo "image: build context assembled in $ASSEMBLE_ONLY (not built)"
  exit 0
fi

# --- the image ---------------------------------------------------------------------------
if ! command -v podman >/dev/null; then
  echo "image: installing podman (Debian package)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman >/dev/null; } \
      || ! command -v podman >/dev/null; then
    if [ "${MODELGW_IMAGE_REQUIRED:-1}" = "0" ]; then
      echo "################################################################################" >&2
      echo "## image: SKIPPED: podman could not be installed; the container image was NOT built" >&2
      echo "################################################################################" >&2
      exit 0
    fi
    fail "podman could not be installed (MODELGW_IMAGE_REQUIRED=0 makes this a skip)"
  fi
fi
echo "image: podman build $TAG (FROM scratch, binary $BINARY)"
PREVIOUS="$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
podman build --quiet --pull=never --no-cache --layers=false \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED" \
  -f "$WORK/Containerfile" -t "$TAG" "$WORK" >/dev/null

# A rebuild of the same tag leaves nothing behind (no intermediate images: --layers=false).
NEW_ID="$(podman image inspect --format '{{.Id}}' "$TAG")"
if [ -n "$PREVIOUS" ] && [ "$PREVIOUS" != "$NEW_ID" ]; then podman rmi "$PREVIOUS" >/dev/null 2>&1 || true; fi

# --- checks ------------------------------------------------------------------------------
inspect() { podman image inspect "$TAG" --format "$1"; }
USER_="$(inspect '{{.Config.User}}')"
ENTRY="$(inspect '{{json .Config.Entrypoint}}')"
CMD_="$(inspect '{{json .Config.Cmd}}')"
WORKDIR_="$(inspect '{{.Config.WorkingDir}}')"
SIZE="$(inspect '{{.Size}}')"
[ "$USER_" = "65532:65532" ] || fail "user is '$USER_', expected 65532:65532"
[ "$ENTRY" = '["/usr/local/bin/modelgw"]' ] || fail "entrypoint is $ENTRY"
[ "$CMD_" = '["data-plane"]' ] || fail "cmd is $CMD_"
[ "$WORKDIR_" = "/var/lib/modelgw" ] || fail "working directory is $WORKDIR_"
[ -z "$(inspect '{{.Config.Healthcheck}}' | grep -v '^<nil>$' || true)" ] || fail "the image has a HEALTHCHECK"
for label in title description version revision created licenses; do
  value="$(inspect "{{index .Config.Labels \"org.opencontainers.image.$label\"}}")"
  [ -n "$value" ] && [ "$value" != "<no value>" ] || fail "label org.opencontainers.image.$label missing"
done
[ "$(inspect '{{index .Config.Labels "org.opencontainers.image.revision"}}')" = "$REVISION" ] \
  || fail "revision label is not $REVISION"

# The image's own filesystem, exported from a created (never started) container.
podman create --name "modelgw-image-check-$$" "$TAG" >/dev/null
EXPORT="$WORK/export"
mkdir -p "$EXPORT"
podman export "modelgw-image-check-$$" | tar -x -C "$EXPORT" --same-owner --numeric-owner
owner() { stat -c '%u:%g %a' "$EXPORT$1"; }
[ "$(owner /usr/local/bin/modelgw)" = "0:0 755" ] || fail "/usr/local/bin/modelgw is $(owner /usr/local/bin/modelgw), expected root-owned 755"
[ "$(owner /var/lib/modelgw | cut -d' ' -f1)" = "65532:65532" ] || fail "/var/lib/modelgw is $(owner /var/lib/modelgw), expected 65532's"
[ "$(owner /tmp | cut -d' ' -f2)" = "1777" ] || fail "/tmp is $(owner /tmp), expected mode 1777"
[ -s "$EXPORT/etc/ssl/certs/ca-certificates.crt" ] || fail "no CA bundle in the image"
# Nothing but the non-root user's working directory and /tmp is writable by it.
WRITABLE="$(find "$EXPORT" -xdev \( -uid 65532 -o -perm -0002 \) ! -type l -printf '/%P\n' | sort | tr '\n' ' ')"
[ "$WRITABLE" = "/tmp /var/lib/modelgw " ] || fail "writable by the user: $WRITABLE (expected /tmp /var/lib/modelgw)"
# The binary starts from the image's files alone, as the image's user: every library it
# needs is in the image. (`podman run` cannot start containers on this machine: no cgroups.)
VERSION_LINE="$(chroot --userspec=65532:65532 "$EXPORT" /usr/local/bin/modelgw --version)" \
  || fail "modelgw does not start inside the image's filesystem"
case "$VERSION_LINE" in *"$VERSION"*) ;; *) fail "modelgw --version printed '$VERSION_LINE'" ;; esac
chroot --userspec=65532:65532 "$EXPORT" /usr/local/bin/modelgw data-plane --help >/dev/null \
  || fail "modelgw data-plane --help failed inside the image's filesystem"

# Read-only-root friendly: a control plane (SQLite, as the dev overlay runs it) starts on a
# read-only mount of the image's files with only /tmp and /var/lib/modelgw writable (tmpfs,
# as the manifests' emptyDir volumes), as uid 65532, and answers its readiness probe.
LOG="$WORK/control-plane.log"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin MODELGW_LOG_FORMAT=json MODELGW_DATABASE_URL=sqlite:///var/lib/modelgw/modelgw.db \
  MODELGW_ADMIN_ADDR=127.0.0.1:0 MODELGW_GRPC_ADDR=127.0.0.1:0 MODELGW_METRICS_ADDR=off \
  unshare --mount --propagation private bash -c '
    set -e
    mount --bind "$1" "$1" && mount -o remount,bind,ro "$1"
    mount -t tmpfs -o mode=1777,size=16m tmpfs "$1/tmp"
    mount -t tmpfs -o uid=65532,gid=65532,mode=0755,size=64m tmpfs "$1/var/lib/modelgw"
    exec chroot --userspec=65532:65532 "$1" /usr/local/bin/modelgw control-plane' _ "$EXPORT" \
  >"$LOG" 2>&1 &
CP_PID=$!
ADMIN=""
for _ in $(seq 1 300); do
  ADMIN="$(sed -n 's/.*"admin":"\([0-9.:]*\)".*control plane listening.*/\1/p; s/.*control plane listening.*"admin":"\([0-9.:]*\)".*/\1/p' "$LOG" | head -n1)"
  [ -n "$ADMIN" ] && break
  kill -0 "$CP_PID" 2>/dev/null || break
  sleep 0.1
done
STATUS="$( [ -n "$ADMIN" ] && curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/api/v1/openapi.json" || echo none)"
kill "$CP_PID" 2>/dev/null || true
wait "$CP_PID" 2>/dev/null || true
if [ "$STATUS" != "200" ]; then
  grep -v -i 'token' "$LOG" | tail -n 20 >&2
  fail "the control plane did not come up on the read-only image filesystem (readiness: $STATUS)"
fi

if [ -n "$KEEP" ]; then rm -rf "$KEEP" && cp -a "$EXPORT" "$KEEP"; fi
echo "image: a control plane started on the read-only image filesystem and answered its readiness probe"
echo "image: OK $TAG — $(awk -v b="$SIZE" 'BEGIN{printf "%.1f MiB", b/1048576}') ($SIZE bytes)," \
  "user $USER_, entrypoint $ENTRY $CMD_, workdir $WORKDIR_, $(echo "$LIBS" | wc -l) shared libraries"
echo "image: labels $(inspect '{{json .Config.Labels}}')"
