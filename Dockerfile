# The training image that launch/gke_jobset.yaml names (IMAGE): this repository in /app with
# requirements.txt and jax[tpu] at the pinned jax version. Build from the repository root:
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/sgdnet-jax:TAG .
# Python 3.11, the oldest the pins accept. GPU nodes: replace jax[tpu] by jax[cuda12].
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The dependencies first: a change to the code alone reuses this layer.
COPY requirements.txt ./
RUN pip install -r requirements.txt "jax[tpu]==$(sed -n 's/^jax==//p' requirements.txt)"

COPY . .
# The package imports and its command line answers: a broken image fails here, not on the pods.
RUN python -m sgdnet_jax.main --help >/dev/null

# The JobSet's command is the train command line (python -m sgdnet_jax.main train ...).
CMD ["python", "-m", "sgdnet_jax.main", "--help"]
