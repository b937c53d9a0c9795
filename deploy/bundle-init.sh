#!/bin/sh
# The training image's entrypoint (deploy/Dockerfile, target train): makes sure a serving
# bundle is at $PROTOLM_BUNDLE_DIR. When its manifest.json is there it does nothing; otherwise
# it trains a model with `protolm train ARGS...`, exports it there with `protolm export`, and
# checks it with `protolm bundle verify`. PROTOLM_INIT_FORCE=1 trains and exports a new bundle
# over an existing one (docker-compose.yml's `train` profile).
#
#   protolm-bundle-init [PROTOLM TRAIN ARGS...]     default: --task sst2
#
# The PROTOLM_* variables of `protolm train` and `protolm export` apply as usual
# (PROTOLM_DATA_DIR: where the task's data is; without it the task comes from the hub).
set -eu

bundle=${PROTOLM_BUNDLE_DIR:?set PROTOLM_BUNDLE_DIR to the bundle directory to create}
force=${PROTOLM_INIT_FORCE:-0}

if [ -f "$bundle/manifest.json" ] && [ "$force" != 1 ]; then
    echo "bundle-init: $bundle already holds a bundle; nothing to do (PROTOLM_INIT_FORCE=1 replaces it)"
    exit 0
fi
if [ "$#" -eq 0 ]; then
    set -- --task sst2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/protolm-bundle-init.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "bundle-init: training: protolm train $*"
protolm train "$@" --output-dir "$work/model"
echo "bundle-init: exporting to $bundle"
# export builds the bundle in a sibling directory and moves it into place only once it loads,
# so a server never sees half a bundle; --overwrite only when asked to replace one.
if [ "$force" = 1 ]; then
    protolm export "$work/model" "$bundle" --overwrite
else
    protolm export "$work/model" "$bundle"
fi
protolm bundle verify "$bundle"
echo "bundle-init: $bundle is ready"
