#!/bin/sh
# As the official redis image does: a redis-server started without a configuration file serves
# the other containers on its network, so protected mode (loopback only without a password)
# is turned off.
set -e
if [ "$1" = "redis-server" ] && [ "${2#-}" != "$2" -o $# -eq 1 ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
