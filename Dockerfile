# wattscale: the adapter, its collectors and estimators in one small, non-root image.
# Build: docker build -t wattscale:0.1.0 .   (podman: see tests/image/test_image.py for a registry-less build)
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# A virtual environment is one directory to copy into the runtime stage, without pip or build tools.
RUN python3 -m venv /opt/wattscale
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapter/ adapter/
COPY collectors/ collectors/
COPY estimators/ estimators/
COPY poweroperator/ poweroperator/
# pandas, numpy, scipy and scikit-learn ship their own test suites (about 110 MiB) that nothing imports at
# run time; pip is not needed in the runtime image either.
RUN /opt/wattscale/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/wattscale/bin/pip uninstall --yes pip \
    && for package in pandas numpy scipy sklearn; do \
        find /opt/wattscale/lib/python3*/site-packages/"${package}" -depth -type d -name tests -exec rm -rf {} +; \
    done

FROM ${BASE_IMAGE} AS runtime
ARG UID=10001
# A named user so that libraries looking up the home directory find one; the numeric USER lets
# Kubernetes check runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid "${UID}" wattscale \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin wattscale
COPY --from=build /opt/wattscale /opt/wattscale
ENV PATH=/opt/wattscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ${UID}:${UID}
EXPOSE 6443
ENTRYPOINT ["wattscale"]
CMD ["serve"]
