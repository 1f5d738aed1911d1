# promoter as a sidecar container (README.md, "Running as a sidecar container").
#
# One image, two services sharing the storage volume (compose.example.yaml):
#   the daemon:       CMD below (promoter run)
#   the web service:  promoter serve --listen 0.0.0.0:8730
# When the web service is reached by a service name (http://promoter-web:8730),
# http.allowed_hosts must include that host name, e.g.
#   PROMOTER_HTTP__ALLOWED_HOSTS='["promoter-web", "localhost"]'
# (DESIGN §7: any other Host header is refused with 400).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMOTER_STORAGE__ROOT=/app/storage

# A fixed uid/gid, so that the other containers sharing the volume (the
# runtime writing sessions/, the kernel reading artifacts/) can be given the
# same user or group.
RUN groupadd --system --gid 10001 promoter \
    && useradd --system --uid 10001 --gid promoter --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin promoter

WORKDIR /src
COPY . /src
# The web extra brings FastAPI and uvicorn for `promoter serve`. EXTRAS picks
# the extras: `docker build --build-arg EXTRAS=web,s3 .` adds obstore and boto3
# for `storage.backend = "s3"` (README.md, "Many hosts"); the default image
# stays as small as before.
ARG EXTRAS=web
# DL3013 (pin versions) is ignored: this installs the source tree copied
# above, not a name from an index; the version is the one in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${EXTRAS}]"

# The store, owned by promoter: a new named volume copies this ownership.
RUN mkdir -p /app/storage/sessions /app/storage/artifacts /app/storage/library \
    && chown -R promoter:promoter /app/storage
VOLUME /app/storage
WORKDIR /app/storage

# DL3066 (non-numeric user) is ignored: the name is what README.md documents,
# and it resolves inside the image to the fixed uid 10001 created above (use
# `--user 10001:10001` where a platform demands a numeric id).
# hadolint ignore=DL3066
USER promoter

# Needs no network: exits non-zero when artifacts/ or library/ is missing or
# unusable, reading no run (O(1) in the number of runs, unlike `ls --json`).
# It checks the store, not the daemon's pipeline; the daemon exits on a fatal
# error and the container's restart policy starts it again.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["promoter", "check"]

# SIGTERM: finish the copy in progress, promote what is closed, exit 0
# (DESIGN §5). Give the container 30 s (compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["promoter", "run"]
