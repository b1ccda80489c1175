# syntax=docker/dockerfile:1
# pullgate's container image. It is built outside this repository's CI (there is
# no Docker engine there): `docker build -t <registry>/pullgate:<version> .`
#
# Both stages start from one base pinned by tag AND by the digest of its
# multi-architecture index: update the two together (README, "Deploying").

# -- build: pullgate's wheel and the wheels of its dependencies ------------------
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m pip wheel --wheel-dir /wheels .

# -- runtime: the wheels installed into a clean base, no build tools, no pip ------
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS runtime
RUN groupadd --system --gid 10001 pullgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pullgate \
      --no-create-home --shell /usr/sbin/nologin pullgate \
 && mkdir -p /var/lib/pullgate /etc/pullgate \
 && chown 10001:10001 /var/lib/pullgate
# The wheels are bind-mounted from the build stage: they never land in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels pullgate \
 && python -m pip uninstall --yes setuptools wheel pip

# The container's defaults (listeners on every interface, SQLite and the keyring
# under /var/lib/pullgate). Kubernetes mounts its own file over /etc/pullgate.
# No PULLGATE_<SECTION>_<KEY> variable here: it would override a mounted config.
COPY deploy/container/config.yaml /etc/pullgate/config.yaml
ENV PULLGATE_CONFIG=/etc/pullgate/config.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /var/lib/pullgate
VOLUME /var/lib/pullgate
# 8080: the pull API (publish this one); 8081: admin (vendor API, portal, metrics): keep it private.
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=3)"]
ENTRYPOINT ["pullgate"]
CMD ["serve"]
