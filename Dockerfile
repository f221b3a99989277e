# clipkit on CPU: the HTTP service with the offline demo model.
#   make docker-build                                   (docker build -t clipkit:cpu .)
#   docker run --rm -p 127.0.0.1:8000:8000 clipkit:cpu  -> http://127.0.0.1:8000/
# Inside the container the server must bind 0.0.0.0 to be reachable through -p at all; publish the port on
# 127.0.0.1 as above, or set an API key when it is reachable from elsewhere: -e CLIPKIT_API_KEY=...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

WORKDIR /app

# The CPU builds of the torch/torchvision pair pinned in pyproject.toml (PyPI's default wheels carry CUDA).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY toolkit ./toolkit
RUN pip install .

COPY configs ./configs
COPY data/models ./data/models
COPY data/samples ./data/samples

RUN useradd --create-home --uid 10001 clipkit
USER clipkit

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]

# `docker stop` sends SIGTERM: readiness turns 503, requests in flight finish, the process exits 0.
CMD ["clipkit", "serve", "--config", "configs/demo.yaml", "--host", "0.0.0.0"]
