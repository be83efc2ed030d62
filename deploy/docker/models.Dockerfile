# syntax=docker/dockerfile:1
# A model repository as an image: exported models (python -m export ...) in /models, plus a shell to copy them.
# Kubernetes runs it as an init container that copies the models a pod serves into the pod's volume (the default,
# deploy/k8s/base); docker-compose copies them into a named volume the same way. Built with the repository folder as
# the context:
#   make models && docker build -f deploy/docker/models.Dockerfile -t ecomserve-models:0.1.0 models/
# Size: busybox (~4 MB) + the models (intent int8 ~25 MB and fp32 ~90 MB, minilm-embed the same,
# smollm2-135m-instruct ~550 MB).
FROM busybox:1.37.0
COPY . /models
# The mount point copies go to: a new docker volume takes its owner, so the non-root copy can write there.
RUN mkdir /srv/models && chown 10001:10001 /srv/models
USER 10001:10001
CMD ["sh", "-c", "ls -R /models | head -50"]
