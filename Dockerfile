# One image for all three services; the command picks the service:
#   docker run huifang run scheduler      (or outcomes, notifier; all three with plain `run`)
#   docker run huifang topics create
FROM python:3.11-slim

# The installed packages live in site-packages, away from the repo root, so the services are
# pointed at the shipped policy explicitly (CONTRACT.md section 4).
ENV PYTHONDONTWRITEBYTECODE=1 \
    HUIFANG_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HUIFANG_POLICY_FILE=/app/policy.toml

RUN groupadd --system --gid 10001 huifang \
    && useradd --system --uid 10001 --gid huifang --home-dir /app --shell /usr/sbin/nologin huifang

WORKDIR /app

# Dependencies first, from the lock and only with the hashes it lists (`make lock` writes it),
# so the image gets exactly the reviewed packages and this layer is cached across code changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY cli/ cli/
COPY policy.toml ./

# .local/ is only used without DATABASE_URL (SQLite files); it stays writable for that case.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info \
    && mkdir -p /app/.local \
    && chown huifang:huifang /app/.local

USER huifang

EXPOSE 8001 8002 8003

ENTRYPOINT ["huifang"]
CMD ["run"]
