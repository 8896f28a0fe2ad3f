#!/bin/sh
# A PostgreSQL server (Debian's `postgresql` package) for the tests of tests/test_postgresql.py.
set -e
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
