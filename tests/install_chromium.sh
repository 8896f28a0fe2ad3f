#!/bin/sh
# Headless Chromium (Debian's `chromium` package) for the browser test of tests/test_dashboard.py.
set -e
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
