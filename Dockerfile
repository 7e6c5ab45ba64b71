# A Concordance node: supervisord (PID 1) running the front, consensus and storage roles.
#   docker build -t concordance .
#   docker run -e CONCORDANCE_API_KEY=... -p 4100:4100 -v cc-data:/data concordance
# A node of a multi-member cluster also needs CONCORDANCE_CLUSTER_KEY (its own random
# secret, the same on every member, not the API key): without it, it refuses to start.
# Every flag of `concordance node` can be given as the command (see docker-compose.yml).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY concordance ./concordance
COPY procs ./procs
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[server]'

FROM python:3.11-slim
# The node runs as an unprivileged user that owns only its data volume.
RUN groupadd --system --gid 10001 concordance \
 && useradd --system --uid 10001 --gid concordance --home-dir /data \
        --shell /usr/sbin/nologin concordance \
 && mkdir -p /data && chown concordance:concordance /data && chmod 700 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'concordance[server]' \
 && rm -rf /wheels
USER concordance
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data"]
EXPOSE 4100
# Ready = a leader is known and storage applied up to the commit index (API.md §3).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4100/readyz', timeout=2)"]
# `concordance node` execs supervisord, so supervisord is PID 1: it reaps the roles,
# and SIGTERM (docker stop) stops the three roles cleanly before it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["concordance"]
CMD ["node", "--id", "n1", "--listen", "0.0.0.0:4100", "--data", "/data"]
