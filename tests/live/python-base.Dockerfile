# The Python base the deploy test builds protolm's images on, in place of the python:3.11-slim
# image a registry would give: Debian bookworm (debootstrap + docker import) with its Python 3.11.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3 python3-venv python-is-python3 \
 && rm -rf /var/lib/apt/lists/*
