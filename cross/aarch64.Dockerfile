FROM ghcr.io/cross-rs/aarch64-unknown-linux-gnu:main
RUN dpkg --add-architecture arm64 && apt-get update && \
    apt-get install -y --no-install-recommends libasound2-dev:arm64 pkg-config && \
    rm -rf /var/lib/apt/lists/*
ENV PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig
