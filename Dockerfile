# mailmon: a small runtime image. Build: docker build -t mailmon .   (podman: podman build --format docker -t mailmon .
# -- without --format docker podman writes an OCI image, and OCI images have no HEALTHCHECK.)
# Run (README.md, "Container"): docker run -p 9917:9917 -v $PWD/config.yaml:/etc/mailmon/config.yaml:ro \
#         -v $PWD/secrets:/run/secrets:ro -v mailmon-data:/var/lib/mailmon mailmon
# State goes to the volume: a relative history.path is taken from $STATE_DIRECTORY, /var/lib/mailmon. Secrets must be
# readable by uid 10001 (e.g. chown 10001 secrets/*; chmod 400 secrets/*).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY monitor ./monitor
# Runtime dependencies only (no test extras) plus uvloop, the C event loop that cuts CPU per probe
# (monitor/eventloop.py; `--event-loop asyncio` opts out), then drop the sources.
# The user and its group are both 10001, created explicitly (`useradd --system` would give the group a system gid
# and warn that 10001 is above SYS_UID_MAX); --no-log-init keeps lastlog/faillog from growing sparse files.
RUN pip install "./[uvloop]" && rm -rf /src \
    && groupadd --gid 10001 mailmon \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /var/lib/mailmon \
       --shell /usr/sbin/nologin mailmon \
    && mkdir -p /var/lib/mailmon && chown 10001:10001 /var/lib/mailmon
# Asks /-/healthy on the address the monitor listens on (its --listen, else its config's listen).
COPY deploy/healthcheck.py /usr/local/lib/mailmon/healthcheck.py

USER 10001:10001
WORKDIR /var/lib/mailmon
# Where a relative history.path goes (as systemd's StateDirectory= sets it): the volume, not the read-only config dir.
ENV STATE_DIRECTORY=/var/lib/mailmon
VOLUME ["/var/lib/mailmon"]

EXPOSE 9917
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/usr/local/lib/mailmon/healthcheck.py"]

# Config and secrets are mounted; the listen address must be reachable from outside the container.
ENTRYPOINT ["mailmon"]
CMD ["run", "--config", "/etc/mailmon/config.yaml", "--listen", "0.0.0.0:9917"]
