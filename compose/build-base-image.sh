#!/usr/bin/env bash
# Prepare everything `compose/Dockerfile` needs, without any container registry:
#
#   base    a Debian bookworm minbase root fs with python3 (debootstrap from the
#           machine's own apt mirror), trimmed and `docker import`ed as $BASE_IMAGE.
#           Skipped when the image already exists (FORCE=1 rebuilds it).
#   wheels  a wheelhouse in compose/wheels/ (git-ignored) with the serving
#           containers' dependencies for CPython 3.11 manylinux, downloaded on the
#           host (TLS to the index does not work from inside containers), plus
#           the project itself as a wheel (compose/wheels/project/). The
#           Dockerfile installs only from them.
#   platform  the platform image (compose/Dockerfile.platform: the serving image
#           $SERVING_IMAGE plus Feast and MLflow, what `mlops-twin export k8s` runs
#           for the registry and feature store) from a wheelhouse in
#           compose/wheels/platform/ downloaded on the host; not part of `all`.
#
# Usage: compose/build-base-image.sh [all|base|wheels|platform]     (default: all)
# Env:   BASE_IMAGE (mlops-twin-base:bookworm), PYTHON (python with pip, default
#        the repo's .venv), SUITE (bookworm), FORCE=1, MIRROR (override the
#        mirror read from the apt sources).
# Prints one line per step with its duration (s) on stderr.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # debootstrap, dockerd live in sbin

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-mlops-twin-base:bookworm}
SUITE=${SUITE:-bookworm}
WHEELS=${WHEELS:-$HERE/wheels}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
what=${1:-all}

say() { echo "build-base-image: $*" >&2; }
die() { say "$*"; exit 1; }

# The first Debian archive URI in the machine's apt sources (deb822 or one-line
# form), skipping the security archive. Read at run time: the repo names no mirror.
apt_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk 'tolower($1)=="uris:" {for (i=2;i<=NF;i++) print $i}' \
        | grep -v -- '-security' | grep '/debian/\?$' | head -n 1 || true)
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
          | grep -v -- '-security' | grep '/debian/\?$' | head -n 1 || true)
  fi
  echo "$uri"
}

build_base() {
  if [ -z "${FORCE:-}" ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE exists; skipped"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root to build $BASE_IMAGE."
  command -v debootstrap >/dev/null || die "debootstrap is missing: run compose/ensure-docker.sh (as root)."
  local mirror=${MIRROR:-$(apt_mirror)}
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources*; set MIRROR=<url>."
  local t0=$SECONDS rootfs
  rootfs=$(mktemp -d /var/tmp/mlops-twin-rootfs.XXXXXX)
  # shellcheck disable=SC2064  # expand now: the trap must remove this very folder
  trap "rm -rf '$rootfs'" EXIT
  say "debootstrap $SUITE from $mirror (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  rm -f "$rootfs.log"
  # Caches and docs are half the root fs and never used by the services.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/man/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  say "base image $BASE_IMAGE built in $((SECONDS - t0)) s"
}

build_wheels() {
  local t0=$SECONDS stamp="$WHEELS/.requirements.sha256" want
  mkdir -p "$WHEELS"
  # Pin to the host venv's versions so the containers run what the tests ran.
  local constraints
  constraints=$(mktemp)
  "$PYTHON" -m pip freeze --exclude-editable 2>/dev/null | grep -v ' @ ' | sed 's/+[a-z0-9.]*$//' >"$constraints" || true
  want=$(cat "$HERE/requirements.txt" "$constraints" | sha256sum | cut -c1-64)
  if [ -z "${FORCE:-}" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "wheelhouse up to date; dependencies skipped"
  else
    rm -f "$WHEELS"/*.whl
    # PIP_CONFIG_FILE=/dev/null: the host's find-links/extra indexes hold wheels for
    # the host, not necessarily manylinux ones for the image.
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$PYTHON" -m pip download -q \
      --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -c "$constraints" -d "$WHEELS" -r "$HERE/requirements.txt" \
      || die "pip download failed (is PyPI reachable from the host?)"
    cp "$HERE/requirements.txt" "$WHEELS/requirements.txt"
    echo "$want" >"$stamp"
  fi
  rm -f "$constraints"
  build_project_wheel
  say "wheelhouse $WHEELS ready in $((SECONDS - t0)) s"
}

# The project as a wheel in $WHEELS/project/ (its own Docker layer, so a source
# change does not reinstall the dependencies), built from a copy of the packages
# the containers import (twin for the spec, testbed for the services) so the
# checkout is not touched. Skipped when the sources are unchanged.
build_project_wheel() {
  local src want stamp="$WHEELS/project/.sources.sha256" log
  want=$(cd "$ROOT" && find pyproject.toml twin testbed -name '*.py' -o -name '*.yaml' \
         -o -name '*.json' -o -name 'pyproject.toml' | grep -v __pycache__ | LC_ALL=C sort \
         | xargs sha256sum | sha256sum | cut -c1-64)
  if [ -z "${FORCE:-}" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && ls "$WHEELS"/project/mlops_twin-*.whl >/dev/null 2>&1; then
    return
  fi
  src=$(mktemp -d)
  cp "$ROOT/pyproject.toml" "$src/"
  : >"$src/README.md"
  (cd "$ROOT" && tar -c --exclude='__pycache__' --exclude='*.pyc' twin testbed) | tar -C "$src" -x
  mkdir -p "$WHEELS/project"
  rm -f "$WHEELS"/project/mlops_twin-*.whl
  # setuptools' deprecation chatter is kept out of the way unless the build fails.
  if ! log=$(PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation \
      -w "$WHEELS/project" "$src" 2>&1); then
    echo "$log" >&2
    rm -rf "$src"
    die "building the project wheel failed"
  fi
  rm -rf "$src"
  echo "$want" >"$stamp"
}

# Feast and MLflow at the testbed's pins (testbed/platform_venv.py), as wheels for
# the image's CPython 3.11, then the platform image built from them with no network.
build_platform() {
  local t0=$SECONDS pins dir="$WHEELS/platform"
  pins=$(cd "$ROOT" && "$PYTHON" -c 'from testbed.platform_venv import PINS; print("\n".join(PINS))')
  mkdir -p "$dir"
  printf '%s\n' "$pins" >"$dir/requirements.txt"
  # the stamp platform_venv.is_ready looks for: .installed-<pins joined by '-'>
  printf '.installed-%s' "$(printf '%s' "$pins" | paste -sd-)" >"$dir/stamp-name"
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$PYTHON" -m pip download -q \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$dir" -r "$dir/requirements.txt" \
    || die "pip download of the platform wheels failed (is PyPI reachable from the host?)"
  docker build -q -f "$HERE/Dockerfile.platform" --network none \
    --build-arg "SERVING_IMAGE=${SERVING_IMAGE:-mlops-twin-node:latest}" \
    -t "${PLATFORM_IMAGE:-mlops-twin-platform:latest}" "$HERE" >/dev/null \
    || die "building the platform image failed (build the serving image first)"
  say "platform image ${PLATFORM_IMAGE:-mlops-twin-platform:latest} built in $((SECONDS - t0)) s"
}

case "$what" in
  all) build_base; build_wheels ;;
  base) build_base ;;
  wheels) build_wheels ;;
  platform) build_platform ;;
  *) die "unknown step '$what' (all|base|wheels|platform)" ;;
esac
