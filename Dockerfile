# One image, roles by subcommand. Stage 1 builds a static jvol; stage 2 is a
# slim Debian with what the node role needs to make and check file systems
# and to manage loop devices.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd cmd
COPY pkg pkg
COPY internal internal
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /jvol ./cmd/jvol

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux e2fsprogs xfsprogs fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /jvol /usr/local/bin/jvol
ENTRYPOINT ["/usr/local/bin/jvol"]
