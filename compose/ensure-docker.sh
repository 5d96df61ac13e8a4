#!/usr/bin/env bash
# Make sure a Docker engine answers on this host, for the compose backend and its
# end-to-end test. Idempotent: exits 0 at once when `docker info` already answers.
# Otherwise, as root, installs the engine, Compose v1 and debootstrap from the
# machine's own apt sources (no registry is needed afterwards: see
# build-base-image.sh) and starts one dockerd in the background.
# Exit status: 0 when an engine answers, 1 when it cannot be had (with a reason).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # debootstrap, dockerd live in sbin

LOG=${DOCKERD_LOG:-/var/log/dockerd-mlops-twin.log}
TIMEOUT_S=${DOCKERD_TIMEOUT_S:-60}

say() { echo "ensure-docker: $*" >&2; }

engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

if engine_answers; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  say "no Docker engine answers and this is not root: cannot install or start one."
  exit 1
fi

missing=()
{ command -v dockerd || [ -x /usr/sbin/dockerd ]; } >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  missing+=(docker-compose)
fi
{ command -v debootstrap || [ -x /usr/sbin/debootstrap ]; } >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  # Sort out duplicates (docker.io may be listed twice).
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  apt_log=${APT_LOG:-/var/log/ensure-docker-apt.log}
  say "installing ${pkgs[*]} with apt-get (log: $apt_log)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } \
      >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    say "apt-get could not install ${pkgs[*]}."
    exit 1
  fi
fi

# Start one daemon only: a dockerd that is already running but not answering yet
# (e.g. still starting) is waited for, not duplicated.
if ! pgrep -x dockerd >/dev/null 2>&1; then
  say "starting dockerd (log: $LOG)"
  mkdir -p "$(dirname "$LOG")"
  # setsid detaches it from this script's process group so CI's clean-up of the
  # script does not take the engine down with it.
  dockerd_bin=$(command -v dockerd || echo /usr/sbin/dockerd)  # sbin may be off PATH
  setsid "$dockerd_bin" >>"$LOG" 2>&1 </dev/null &
fi

deadline=$((SECONDS + TIMEOUT_S))
until engine_answers; do
  if [ $SECONDS -ge $deadline ]; then
    say "dockerd did not answer within ${TIMEOUT_S} s; last lines of $LOG:"
    tail -n 20 "$LOG" >&2 2>/dev/null || true
    exit 1
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    say "dockerd exited; last lines of $LOG:"
    tail -n 20 "$LOG" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
say "Docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
