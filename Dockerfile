# One image for the api, the workers and the one-shot migration.
# GPU hosts: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for CUDA wheels.
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# The image listens on all interfaces, so API keys are required (GROKLAB_AUTH=auto).
ENV GROKLAB_HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY engine ./engine
COPY groklab ./groklab
COPY migrations ./migrations
RUN pip install --extra-index-url "$TORCH_INDEX" .
RUN useradd --create-home groklab && mkdir -p /data && chown groklab /data
USER groklab
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
