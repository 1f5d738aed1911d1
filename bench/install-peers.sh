#!/usr/bin/env bash
# The peers of bench/ from Debian's packages, as this machine has them (lsyncd 2.2.3, rsync,
# inotify-tools' inotifywait, openssl): apt only for what is missing. Run as root.
set -euo pipefail
missing=()
for pkg in lsyncd rsync inotify-tools openssl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi
