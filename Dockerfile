# Runtime image: openvino + sdcli, no torch.  Convert models elsewhere (or with the
# `convert` extra) and mount them at /models:
#   docker build -t sdcli .
#   docker run --rm -v $PWD/models/sd15:/models/sd15 -v $PWD/out:/out sdcli \
#       generate --model /models/sd15 --prompt "a corgi" --output /out/corgi.png
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    SDCLI_CACHE_DIR=/cache \
    HF_HOME=/cache/huggingface

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdcli ./sdcli
RUN pip install . && rm -rf /src

RUN useradd --create-home sdcli && mkdir -p /models /out /cache && chown sdcli /models /out /cache
USER sdcli
WORKDIR /out
VOLUME ["/models", "/cache"]
ENTRYPOINT ["sdcli"]
CMD ["--help"]
