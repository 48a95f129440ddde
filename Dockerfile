# One image for every part of Distillery: the API, the workers (CPU and GPU) and the embedded
# `distillery up`. The command picks the part, e.g. `api --host 0.0.0.0` or `worker --queues gpu`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in a layer of their own: they are large (torch) and change rarely, so a
# change to the code rebuilds only the last layers. PyPI's Linux torch wheel brings its CUDA
# libraries, so the same image serves CPU and GPU workers (the host provides only the driver).
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY . .
RUN pip install --no-deps .

# Run as an unprivileged user. The data folder is created here, owned by that user, so that a
# named volume mounted on it starts out writable (Docker copies ownership into a new volume).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin distillery \
 && mkdir -p /var/lib/distillery \
 && chown distillery:distillery /var/lib/distillery
USER distillery
WORKDIR /home/distillery
ENV KD_DATA_DIR=/var/lib/distillery
EXPOSE 8000

ENTRYPOINT ["distillery"]
# Alone (`docker run -p 8000:8000 -e KD_API_KEYS=key:tenant IMAGE`) the image runs the whole
# embedded stack; it refuses to listen on 0.0.0.0 without API keys.
CMD ["up", "--host", "0.0.0.0", "--port", "8000"]
