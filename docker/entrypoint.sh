#!/bin/sh
# critic-rm container entrypoint: publish a bootstrap checkpoint if the volume has none, then serve.
#   (no args) | serve [...]  -> critic-rm bootstrap --if-missing, then exec critic-rm serve [...]
#   anything else            -> exec'd as given (e.g. `critic-rm versions`, `sh`)
# CRITIC_RM_BOOTSTRAP=0 skips the bootstrap step (a read-only volume that must already hold a
# published version: serving then fails fast with a clear error if `current` is missing).
set -eu

root="${CRM_CHECKPOINT_ROOT:-/checkpoints}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi

if [ "$1" = "serve" ]; then
    shift
    if [ "${CRITIC_RM_BOOTSTRAP:-1}" != "0" ]; then
        critic-rm bootstrap --if-missing --checkpoint-root "$root"
    fi
    exec critic-rm serve --checkpoint-root "$root" "$@"
fi

exec "$@"
