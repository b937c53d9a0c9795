#!/bin/sh
# Runs a build step (pip, apt) with the builder's own CA certificates and pip settings, when
# the build passes them as BuildKit secrets (deploy/README.md, "Building behind a proxy"):
#
#   --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt   a whole CA bundle
#   --secret id=pip-conf,src=pip.conf                                      pip's settings
#
# Secrets are mounted for one RUN only and never written to a layer, so a published image
# keeps neither. Without them this runs the step as it is.
#
#   with-build-settings.sh COMMAND [ARGS...]
set -eu

if [ -s /run/secrets/ca-certificates ]; then
    export PIP_CERT=/run/secrets/ca-certificates SSL_CERT_FILE=/run/secrets/ca-certificates REQUESTS_CA_BUNDLE=/run/secrets/ca-certificates
fi
if [ -s /run/secrets/pip-conf ]; then
    export PIP_CONFIG_FILE=/run/secrets/pip-conf
fi
exec "$@"
