# The CPU worker as a container image (docs/deploy.md). Not built in CI: the CI machine has
# no Docker daemon; scripts/deploy_check.py checks that the binary path agrees with
# docs/deploy/k8s.yaml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin worker-cpud

FROM debian:bookworm-slim
COPY --from=build /src/target/release/worker-cpud /usr/local/bin/worker-cpud
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/worker-cpud"]
CMD ["serve", "--host=0.0.0.0", "--port=8080", "--model=/models/model.gguf"]
