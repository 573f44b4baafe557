#!/usr/bin/env bash
# Start or stop a Docker engine for local mode.
#   containers/dockerd.sh start   start dockerd unless one answers already (then do nothing)
#   containers/dockerd.sh stop    stop the dockerd that `start` started, and only that one
set -euo pipefail
cd "$(dirname "$0")/.."
state=build/dockerd
mkdir -p "$state"
pidfile=$state/dockerd.pid

case "${1:-}" in
start)
  if docker info >/dev/null 2>&1; then
    echo "dockerd: already running"
    exit 0
  fi
  command -v dockerd >/dev/null || { echo "dockerd missing: apt-get install docker.io" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "dockerd must be started as root" >&2; exit 1; }
  nohup dockerd >"$state/dockerd.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && { echo "dockerd: started (pid $(cat "$pidfile"))"; exit 0; }
    sleep 1
  done
  echo "dockerd did not answer within 60 s; its log:" >&2
  tail -20 "$state/dockerd.log" >&2
  exit 1
  ;;
stop)
  [ -f "$pidfile" ] || exit 0
  pid=$(cat "$pidfile")
  # Containers of an interrupted local-mode job would keep the engine busy: remove them first.
  ids=$(docker ps -aq --filter label=com.docker.compose.project 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  rm -f "$pidfile"
  echo "dockerd: stopped"
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
