# pullgate: build with `docker build -t pullgate .`
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /var/lib/pullgate pullgate \
 && mkdir -p /var/lib/pullgate /etc/pullgate \
 && chown pullgate /var/lib/pullgate

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir . && rm -rf /src

COPY config/example.yaml /etc/pullgate/config.yaml
# Container defaults; every key of the config file can be overridden like this.
ENV PULLGATE_CONFIG=/etc/pullgate/config.yaml \
    PULLGATE_PROXY_LISTEN=0.0.0.0:8080 \
    PULLGATE_ADMIN_LISTEN=0.0.0.0:8081 \
    PULLGATE_STORE=sqlite:///var/lib/pullgate/pullgate.db \
    PULLGATE_KEYS_FILE=/var/lib/pullgate/keys.yaml

USER pullgate
WORKDIR /var/lib/pullgate
VOLUME /var/lib/pullgate
# 8080: the pull API (expose this one); 8081: admin (vendor API, portal, metrics) — keep it private.
EXPOSE 8080 8081
ENTRYPOINT ["pullgate"]
CMD ["serve"]
