# fngate image: statically linked binaries in an empty image, non-root.
#
# No container registry is needed (FROM scratch): build the binaries on the
# host first, then the image:
#   bash scripts/build-static.sh
#   docker build -t fngate:local .
# The same image runs the gateway (default) and the sandbox worker
# (entrypoint /fngate/sandbox-runtime); see docker-compose.yml.
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/gateway /fngate/gateway
COPY target/x86_64-unknown-linux-gnu/release/sandbox-runtime /fngate/sandbox-runtime
COPY target/x86_64-unknown-linux-gnu/release/fngate-echo /fngate/fngate-echo
COPY config/docker/gateway.toml /fngate/config/gateway.toml
# A writable home for certificates, the usage log and instance directories.
COPY --chown=65534:65534 docker/data /data
ENV TMPDIR=/data/tmp
WORKDIR /data
USER 65534:65534
EXPOSE 8443 9464 7070
ENTRYPOINT ["/fngate/gateway"]
CMD ["--config", "/fngate/config/gateway.toml"]
