#!/usr/bin/env bash
# Make sure Debian's Chromium is installed (the browser tests drive it through Playwright with
# executable_path; Playwright's own browser download is not used) and print its path.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >&2
    $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
fi
echo "$CHROMIUM"
