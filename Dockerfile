# The image of every node of an Atoll cluster: cluster.yaml's `docker:` section (`ray up`) and the KubeRay
# manifests (`atoll k8s render`) both name it. Ray's own image for the pinned Ray, with this project and its
# pinned dependencies (docker/requirements.lock, written by docker/lock.py from the tested environment).
#
#   docker build -t atoll:0.1.0-ray2.60.0 .                                     # CPU nodes
#   docker build -t atoll:0.1.0-ray2.60.0-gpu --build-arg BASE=rayproject/ray:2.60.0-py311-gpu \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .   # GPU nodes (CUDA torch)
#
# Push it to your registry and name it in cluster.yaml (docker.image) and metadata.atoll.k8s.image.
ARG BASE=rayproject/ray:2.60.0-py311
FROM ${BASE}

# The CPU build of torch by default; a GPU image passes a CUDA index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /home/ray/atoll
COPY --chown=ray:users docker/requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "$(grep '^torch==' /tmp/requirements.lock)" \
 && pip install --no-cache-dir -r /tmp/requirements.lock \
 && rm /tmp/requirements.lock
COPY --chown=ray:users . /home/ray/atoll
# The project itself, without touching the pinned dependencies installed above.
RUN pip install --no-cache-dir --no-deps -e /home/ray/atoll \
 && test -x /home/ray/anaconda3/bin/atoll-haproxy
# Ray starts HAProxy (the ingress of `ray up` and KubeRay clusters) through Atoll's wrapper: its stats and metrics
# listeners on loopback, its admin socket 0600, /-/routes refused (atoll.ingress.harden).
ENV RAY_SERVE_HAPROXY_BINARY_PATH=/home/ray/anaconda3/bin/atoll-haproxy
# Token auth on, as `atoll up` starts it; the token itself comes from a Secret or file mount, never the image.
ENV RAY_AUTH_MODE=token HF_HUB_OFFLINE=1
