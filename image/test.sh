#!/usr/bin/env bash
# `make image-test`: builds the Dockerfile on a Debian base made here with debootstrap (no registry needed), runs
# the image with buildah and checks it: what the image holds (no build leftovers, an empty data volume owned by
# the runtime user); from outside, gRPC health SERVING and a ResolveModel answer; the server process running as
# the image's non-root user; the image's own HEALTHCHECK command; a backup taken in the running container; a
# clean SIGTERM shutdown; the data files the sidecar wrote.
#
# Needs root (debootstrap, buildah), a Debian mirror and a Python package index (PyPI, or PIP_INDEX_URL).
# Everything lives in a private buildah storage under a temporary directory that is removed on exit, whatever
# happens. Only the debootstrap tarball is kept, as a cache: see image/README.md for the knobs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_BIN=${VENV_BIN:-$REPO/.venv/bin}
SUITE=${DEBIAN_SUITE:-bookworm}
INCLUDE=python3,python3-venv,ca-certificates
IMAGE=localhost/duo-sidecar:test
BASE=localhost/duo-base:$SUITE
EXPECTED_UID=10001
CACHE_DIR=${DUO_IMAGE_CACHE_DIR:-$REPO/var/cache/image}
CACHE_MAX_AGE_DAYS=${DUO_IMAGE_CACHE_MAX_AGE_DAYS:-7}
export BUILDAH_ISOLATION=chroot

START=$SECONDS
log() { printf '[image-test +%3ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root: debootstrap and buildah (chroot isolation) need it"
[ -x "$VENV_BIN/duo-admin" ] || die "$VENV_BIN/duo-admin not found: run make install first"
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing buildah and debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi

# The mirror this machine's apt uses for $SUITE (deb822 .sources first, then one-line lists), else Debian's CDN.
detect_mirror() {
    local mirror=""
    shopt -s nullglob
    local sources=(/etc/apt/sources.list.d/*.sources) lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    shopt -u nullglob
    if [ ${#sources[@]} -gt 0 ]; then
        mirror=$(awk -v suite="$SUITE" '
            function flush() {
                if (!found && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1
                }
                types = suites = uris = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
            /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
            /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
            END { flush() }' "${sources[@]}" | head -n1)
    fi
    if [ -z "$mirror" ]; then
        for list in "${lists[@]}"; do
            [ -f "$list" ] || continue
            mirror=$(awk -v suite="$SUITE" '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit } }' "$list")
            [ -n "$mirror" ] && break
        done
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}
MIRROR=${DEBIAN_MIRROR:-$(detect_mirror)}

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/duo-image-test.XXXXXX")
# buildah's own temporary files (run configs, mount points) go here too, so cleanup finds them.
mkdir "$WORK/tmp"
export TMPDIR=$WORK/tmp
B=(buildah --root "$WORK/storage" --runroot "$WORK/run")
# overlay cannot stack on overlay (CI jobs inside containers); vfs always works, only slower.
if [ -z "${BUILDAH_STORAGE_DRIVER:-}" ] && [ "$(stat -f -c %T "$WORK")" = overlayfs ]; then
    BUILDAH_STORAGE_DRIVER=vfs
fi
B+=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-overlay}")
RUN_PID=""
SERVER_PID=""
# buildah keeps a blob-info cache in /var/lib/containers even with --root: remove it if this run created it.
CONTAINERS_DIR_EXISTED=$([ -e /var/lib/containers ] && echo 1 || true)

# Every process below pid (buildah run -> chroot runtime -> the command), deepest last.
descendants() {
    local child
    for child in $(awk -v parent="$1" '$1 == "PPid:" && $2 == parent { print FILENAME }' /proc/[0-9]*/status 2>/dev/null |
        cut -d/ -f3); do
        echo "$child"
        descendants "$child"
    done
}

# The server process: the Python process running `duo-sidecar serve` below our `buildah run`.
find_server() {
    local proc pid parent cmdline
    [ -n "$RUN_PID" ] || return 1
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        cmdline=$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null) || continue
        [[ $cmdline == *python*duo-sidecar\ serve* ]] || continue
        parent=$pid
        while [ "$parent" -gt 1 ]; do
            parent=$(awk '/^PPid:/ { print $2 }' "/proc/$parent/status" 2>/dev/null) || break
            [ -n "$parent" ] || break
            if [ "$parent" = "$RUN_PID" ]; then
                echo "$pid"
                return 0
            fi
        done
    done
    return 1
}
cleanup() {
    local rc=$?
    set +e
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
        # SIGTERM to the server lets it shut down cleanly and buildah run exit; SIGKILL what is left.
        SERVER_PID=${SERVER_PID:-$(find_server)}
        [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 30); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.5; done
        local leftovers
        leftovers=$(descendants "$RUN_PID")
        # shellcheck disable=SC2086 # a list of pids
        kill -KILL "$RUN_PID" $leftovers 2>/dev/null
        wait "$RUN_PID" 2>/dev/null
    fi
    if [ $rc -ne 0 ] && [ -s "$WORK/sidecar.log" ]; then
        log "sidecar log (last 40 lines):"
        tail -n 40 "$WORK/sidecar.log" >&2
    fi
    if [ -d "$WORK/storage" ]; then
        "${B[@]}" rm --all >/dev/null 2>&1
        "${B[@]}" rmi --all --force >/dev/null 2>&1
    fi
    # Unmount whatever is left below $WORK (deepest first) before deleting: never recurse into a mount.
    findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r | while read -r target; do umount -l "$target"; done
    rm -rf --one-file-system "$WORK"
    [ -n "$CONTAINERS_DIR_EXISTED" ] || rm -rf --one-file-system /var/lib/containers
    [ -e "$WORK" ] && log "could not remove $WORK completely"
    log "cleaned up; image-test $([ $rc -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - START))s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- 1. the base image: debootstrap's rootfs as a tarball (cached), imported into buildah ------------------------

ARCH=$(dpkg --print-architecture)
KEY=$(printf '%s\n' v1 "$SUITE" "$MIRROR" "$INCLUDE" "$ARCH" | sha256sum | cut -c1-12)
TARBALL=$CACHE_DIR/debian-$SUITE-$ARCH-$KEY.tar
if [ -n "${DUO_IMAGE_NO_CACHE:-}" ] || [ ! -f "$TARBALL" ] ||
    [ -n "$(find "$TARBALL" -mtime "+$CACHE_MAX_AGE_DAYS" 2>/dev/null)" ] || ! tar -tf "$TARBALL" ./usr/bin/python3 >/dev/null 2>&1; then
    log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR"
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    # No package caches or indexes in the image; apt-get update restores them when someone needs them.
    rm -rf "$WORK/rootfs"/var/cache/apt/*.bin "$WORK/rootfs"/var/cache/apt/archives/*.deb \
        "$WORK/rootfs"/var/lib/apt/lists/* "$WORK/rootfs"/var/log/*.log
    mkdir -p "$CACHE_DIR"
    # Written aside and renamed, so an interrupted run never leaves a truncated cache entry.
    tar --numeric-owner --xattrs -C "$WORK/rootfs" -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
    rm -rf --one-file-system "$WORK/rootfs"
    find "$CACHE_DIR" -name "debian-*.tar" ! -name "$(basename "$TARBALL")" -delete
else
    log "using cached base rootfs $TARBALL"
fi

log "importing the rootfs as $BASE"
ctr=$("${B[@]}" from scratch)
mnt=$("${B[@]}" mount "$ctr")
tar --numeric-owner --xattrs -xpf "$TARBALL" -C "$mnt"
"${B[@]}" umount "$ctr" >/dev/null
"${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd /bin/sh "$ctr"
"${B[@]}" commit --quiet --format docker --rm "$ctr" "$BASE" >/dev/null

# -- 2. the image -------------------------------------------------------------------------------------------------

# The host's pip configuration may point at local paths (file://) that do not exist inside the build: only
# http(s) indexes from the environment are passed on; otherwise pip in the build uses PyPI.
INDEX_ARGS=()
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    value=${!var:-}
    if [[ $value == http://* || $value == https://* ]]; then INDEX_ARGS+=(--build-arg "$var=$value"); fi
done
# The CA bundle this machine's pip trusts (PIP_CERT, pip's cert setting, the system bundle): it may hold a
# TLS-intercepting proxy's CA that the base image does not know. A build secret, so no layer keeps it.
CA_BUNDLE=${PIP_CERT:-$("$VENV_BIN/pip" config get global.cert 2>/dev/null || true)}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$CA_BUNDLE" ] && INDEX_ARGS+=(--secret "id=ca-bundle,src=$CA_BUNDLE")
log "building $IMAGE (pip index: ${PIP_INDEX_URL:-https://pypi.org/simple}, CA bundle: ${CA_BUNDLE})"
if ! "${B[@]}" bud --isolation chroot --format docker --pull=never --build-arg "BASE_IMAGE=$BASE" \
    "${INDEX_ARGS[@]}" -f "$REPO/Dockerfile" -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    die "buildah bud failed"
fi
log "built $IMAGE ($("${B[@]}" images --format '{{.Size}}' "$IMAGE"))"

"${B[@]}" inspect --type image "$IMAGE" >"$WORK/image.json"
# One field of the image's Docker config (buildah 1.28's --format has no json function).
image_config() {
    "$VENV_BIN/python" - "$WORK/image.json" "$1" <<'PY'
import json
import sys

config = json.load(open(sys.argv[1]))["Docker"]["config"]
what = sys.argv[2]
if what == "user":
    print(config.get("User") or "")
elif what == "command":  # ENTRYPOINT + CMD, exactly as the image declares them
    print("\n".join((config.get("Entrypoint") or []) + (config.get("Cmd") or [])))
elif what == "healthcheck":  # the exec-form HEALTHCHECK command
    test = (config.get("Healthcheck") or {}).get("Test") or []
    print("\n".join(test[1:] if test[:1] == ["CMD"] else []))
elif what == "volumes":
    print(" ".join(sorted(config.get("Volumes") or {})))
PY
}
USER_SPEC=$(image_config user)
case "${USER_SPEC%%:*}" in
    "" | 0 | root) die "the image runs as root (USER '$USER_SPEC')" ;;
esac
mapfile -t COMMAND < <(image_config command)
mapfile -t HEALTHCHECK < <(image_config healthcheck)
[ "$(image_config volumes)" = /var/lib/duo-sidecar ] || die "expected VOLUME /var/lib/duo-sidecar, got '$(image_config volumes)'"
[ ${#HEALTHCHECK[@]} -gt 0 ] || die "the image declares no exec-form HEALTHCHECK"

# -- 3. run it and check it from outside ----------------------------------------------------------------------

free_port() { "$VENV_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
# Chroot isolation shares the host's network: listen on loopback, on a free port.
RUN_ENV=(--env "DUO_SIDECAR_SERVER_LISTEN=127.0.0.1:$PORT" --env "DUO_SIDECAR_METRICS_LISTEN=127.0.0.1:$METRICS_PORT")
ctr=$("${B[@]}" from --pull=never "$IMAGE")

# What the image holds: an empty data directory owned by the runtime user, and nothing from the build.
mnt=$("${B[@]}" mount "$ctr")
[ "$(stat -c %u "$mnt/var/lib/duo-sidecar")" = "$EXPECTED_UID" ] || die "/var/lib/duo-sidecar is not owned by $EXPECTED_UID"
[ -z "$(ls -A "$mnt/var/lib/duo-sidecar")" ] || die "/var/lib/duo-sidecar is not empty in the image"
for leftover in /src /wheels /opt/build-venv /run/secrets/ca-bundle /opt/duo-sidecar/bin/pip; do
    [ ! -e "$mnt$leftover" ] || die "the image contains $leftover"
done
"${B[@]}" umount "$ctr" >/dev/null
log "image contents: data directory empty and owned by $EXPECTED_UID, no build leftovers, no pip"

log "starting '${COMMAND[*]}' as $USER_SPEC on 127.0.0.1:$PORT"
"${B[@]}" run --isolation chroot --user "$USER_SPEC" "${RUN_ENV[@]}" "$ctr" -- "${COMMAND[@]}" \
    >"$WORK/sidecar.log" 2>&1 &
RUN_PID=$!

healthy=""
for _ in $(seq 1 120); do
    kill -0 "$RUN_PID" 2>/dev/null || die "the sidecar exited before serving"
    if "$VENV_BIN/duo-sidecar" healthcheck --address "127.0.0.1:$PORT" --timeout 1 >"$WORK/health.out" 2>&1; then
        healthy=1
        break
    fi
    sleep 0.5
done
[ -n "$healthy" ] || die "not SERVING after 60s: $(cat "$WORK/health.out")"
log "health: $(cat "$WORK/health.out")"

"$VENV_BIN/duo-admin" --address "127.0.0.1:$PORT" resolve --user 1 --feature duo_chat >"$WORK/resolve.out" 2>&1 ||
    die "ResolveModel failed: $(cat "$WORK/resolve.out")"
grep -Eq '^model_identifier: +[a-z0-9_]+' "$WORK/resolve.out" || die "unexpected ResolveModel answer: $(cat "$WORK/resolve.out")"
log "ResolveModel: $(grep -E '^(provider|model_identifier|source):' "$WORK/resolve.out" | tr -s ' ' | paste -sd ' ')"

SERVER_PID=$(find_server) || die "cannot find the server process under buildah run (pid $RUN_PID)"
read -r -a UIDS < <(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$SERVER_PID/status")
read -r -a GIDS < <(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$SERVER_PID/status")
for id in "${UIDS[@]}"; do
    [ "$id" = "$EXPECTED_UID" ] || die "server process $SERVER_PID runs with uids ${UIDS[*]}, expected $EXPECTED_UID"
done
log "server process $SERVER_PID: uid ${UIDS[*]}, gid ${GIDS[*]}"

# As in a real container, the HEALTHCHECK sees a wildcard listen address and probes loopback.
"${B[@]}" run --isolation chroot --user "$USER_SPEC" --env "DUO_SIDECAR_SERVER_LISTEN=0.0.0.0:$PORT" "$ctr" -- \
    "${HEALTHCHECK[@]}" >"$WORK/hc.out" 2>&1 || die "the image's HEALTHCHECK (${HEALTHCHECK[*]}) failed: $(cat "$WORK/hc.out")"
log "HEALTHCHECK in the image: $(cat "$WORK/hc.out")"

"${B[@]}" run --isolation chroot --user "$USER_SPEC" "$ctr" -- duo-sidecar backup --to /tmp/backup.db \
    >"$WORK/backup.out" 2>&1 || die "duo-sidecar backup in the container failed: $(cat "$WORK/backup.out")"
log "backup in the container: $(head -n1 "$WORK/backup.out")"

kill -TERM "$SERVER_PID"
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=""
[ $rc -eq 0 ] || die "the sidecar exited with $rc after SIGTERM"
grep -q "duo-sidecar stopped" "$WORK/sidecar.log" || die "no clean shutdown in the sidecar log"
if "$VENV_BIN/duo-sidecar" healthcheck --address "127.0.0.1:$PORT" --timeout 1 >/dev/null 2>&1; then
    die "healthcheck still passes after the sidecar stopped"
fi
log "SIGTERM: clean shutdown, healthcheck now fails as it should"

# The volume keeps what the sidecar wrote, owned by the runtime user; the token key is private.
"${B[@]}" run --isolation chroot --user "$USER_SPEC" "$ctr" -- \
    stat -c '%u %a %n' /var/lib/duo-sidecar/sidecar.db /var/lib/duo-sidecar/token.key >"$WORK/data.out" 2>&1 ||
    die "data files missing: $(cat "$WORK/data.out")"
grep -qx "$EXPECTED_UID [0-7]* /var/lib/duo-sidecar/sidecar.db" "$WORK/data.out" &&
    grep -qx "$EXPECTED_UID 600 /var/lib/duo-sidecar/token.key" "$WORK/data.out" ||
    die "unexpected data files: $(cat "$WORK/data.out")"
log "data files: $(paste -sd ';' "$WORK/data.out")"
log "OK"
