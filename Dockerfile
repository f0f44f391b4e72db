# syntax=docker/dockerfile:1
# Images of the product, one Dockerfile, one target each:
#   docker build -t onnx-bundle-serving .                          # CPU service (default target)
#   docker build --target serve-gpu -t onnx-bundle-serving:gpu .   # CUDA service
#   docker build --target batch -t onnx-bundle-batch .             # Spark job (spark.kubernetes.container.image)
#   docker build --target train -t onnx-bundle-training .          # training Job
# The service image holds only the `serve` and `tracing` extras: onnxruntime, FastAPI, uvicorn,
# grpcio, the OpenTelemetry SDK (off unless OTEL_* or --tracing asks). No torch, no Spark. It serves HTTP on 8080 and gRPC on 8081 (the Open Inference Protocol on both).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: one wheel of the project, so later stages install it without the source tree
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY inference/ inference/
COPY training/ training/
COPY serving/ serving/
COPY batch/ batch/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- serve: the CPU prediction service (the default target, last in this file)
FROM ${PYTHON_IMAGE} AS serve-base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --user-group app
WORKDIR /app
# Dependencies first (their own layer): a code change does not reinstall them.
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py serve tracing > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && rm requirements.txt requirements.py
COPY --from=build /wheels/ /wheels/
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
COPY --chown=app:app models/ models/
USER 10001
EXPOSE 8080
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=2).status != 200)"]
CMD ["python", "-m", "serving", "--repo", "models", "--host", "0.0.0.0", "--port", "8080", "--grpc-port", "8081"]

# ---- serve-gpu: the same service on CUDA (onnxruntime-gpu instead of onnxruntime). The `gpu`
# extra brings CUDA 13 and cuDNN as NVIDIA's wheels, so no CUDA base image is needed: the host's
# driver (580 or later, for CUDA 13) comes in through the NVIDIA container toolkit.
FROM ${PYTHON_IMAGE} AS serve-gpu
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SERVING_PROVIDERS=cuda,cpu
RUN useradd --create-home --uid 10001 --user-group app
WORKDIR /app
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py serve tracing gpu --without onnxruntime > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && rm requirements.txt requirements.py
COPY --from=build /wheels/ /wheels/
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
COPY --chown=app:app models/ models/
USER 10001
EXPOSE 8080
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=2).status != 200)"]
CMD ["python", "-m", "serving", "--repo", "models", "--host", "0.0.0.0", "--port", "8080", "--grpc-port", "8081"]

# ---- batch: Java 17 + the `batch` extra, for spark-submit and spark.kubernetes.container.image
FROM ${PYTHON_IMAGE} AS batch
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYSPARK_PYTHON=python \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.* procps=2:4.* tini=0.19.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 185 --user-group spark
WORKDIR /opt/app
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py batch > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && rm requirements.txt requirements.py
COPY --from=build /wheels/ /wheels/
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
COPY --chown=spark:spark models/ models/
USER 185
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "batch", "--help"]

# ---- train: the `train` extra (torch, onnx) for k8s/training/job.yaml. torch from the default
# index is its CUDA build (large); for a CPU-only image, point pip at a CPU wheel index with
# --build-arg PIP_EXTRA_INDEX_URL=<index>.
FROM ${PYTHON_IMAGE} AS train
ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --create-home --uid 10001 --user-group app
WORKDIR /app
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py train > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt \
    && rm requirements.txt requirements.py
COPY --from=build /wheels/ /wheels/
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
COPY --chown=app:app models/ models/
USER 10001
CMD ["python", "-m", "training", "--help"]

# ---- the default target: the CPU service
FROM serve-base AS serve
