#!/bin/sh
# critic-rm container entrypoint: publish the default checkpoint if the volume lacks it, then serve.
#   (no args) | serve [...]  -> critic-rm assemble --if-missing (the trained default delta baked
#                               into the image at $CRITIC_RM_DEFAULT_DELTA) or, without a delta,
#                               critic-rm bootstrap --if-missing; then exec critic-rm serve [...]
#   anything else            -> exec'd as given (e.g. `critic-rm versions`, `sh`)
# CRITIC_RM_BOOTSTRAP=0 skips that step (a read-only volume that must already hold a published
# version: serving then fails fast with a clear error if `current` is missing).
set -eu

root="${CRM_CHECKPOINT_ROOT:-/checkpoints}"
delta="${CRITIC_RM_DEFAULT_DELTA:-/opt/critic-rm/default-delta}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi

if [ "$1" = "serve" ]; then
    shift
    if [ "${CRITIC_RM_BOOTSTRAP:-1}" != "0" ]; then
        if [ -f "$delta/delta.json" ]; then
            critic-rm assemble --if-missing --delta "$delta" --checkpoint-root "$root"
        else
            critic-rm bootstrap --if-missing --checkpoint-root "$root"
        fi
    fi
    exec critic-rm serve --checkpoint-root "$root" "$@"
fi

exec "$@"
