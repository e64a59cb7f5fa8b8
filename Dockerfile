# mmva serving container, SageMaker style (BYO inference container):
#   docker build -t mmva-serve .
#   docker run -p 8080:8080 mmva-serve serve                      # shipped default model
#   docker run -p 8080:8080 -v $PWD/model:/opt/ml/model mmva-serve serve
# SageMaker runs `docker run IMAGE serve`, mounts the extracted model.tar.gz at /opt/ml/model and
# talks to port 8080 (GET /ping, POST /invocations). Everything runs offline on CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MMVA_OFFLINE=1 \
    MMVA_SERVE_DIR=/tmp/mmva-serve \
    OMP_NUM_THREADS=2

# libgomp: torch's CPU kernels; libglib: OpenCV. PyAV's wheels bundle their own FFmpeg.
# Unpinned: Debian's security updates within the release are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# The CPU build of torch (the default PyPI wheel brings ~5 GB of CUDA libraries a CPU endpoint never uses).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"

WORKDIR /opt/mmva
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && python -c "import mmva.serve.app"

COPY docker/serve /usr/local/bin/serve
RUN chmod +x /usr/local/bin/serve && mkdir -p /opt/ml/model /tmp/mmva-serve

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]
CMD ["serve"]
