# vitrt on NVIDIA's Triton Inference Server: build the TensorRT engine on the target GPU, export the Triton model
# repository, serve it with the container's native TensorRT backend (no Python in the request path).
#
# Not built or run on vitrt's development machines: they reach no NVIDIA container registry and have no GPU.
#
#   docker build -f docker/triton.Dockerfile -t vitrt-triton .
#   docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v vitrt-models:/models \
#       -e VITRT_MODEL=deit_small_patch16_224 -e VITRT_NAME=deit_small vitrt-triton
#
# The first start compiles the engine into /models/build/<name> (kept in the volume, reused by later starts:
# a plan only runs on the GPU model and TensorRT version it was built with), writes /models/repo/<name> with
# `vitrt export triton`, then execs tritonserver on it. Extra arguments go to tritonserver.
ARG TRITON_TAG=25.01-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}

# TensorRT's Python bindings for the engine build. The plan must come from exactly the TensorRT that the image's
# tensorrt backend runs (25.01: 10.8.0.43; see NVIDIA's framework support matrix for other tags); the check below
# refuses to build an image whose bindings and backend library disagree.
ARG TENSORRT_VERSION=10.8.0.43
WORKDIR /opt/vitrt
COPY setup.py README.md ./
COPY vitrt ./vitrt
RUN python3 -m pip install --no-cache-dir --break-system-packages "tensorrt==${TENSORRT_VERSION}" ".[trt]" \
        "tritonclient[grpc]>=2.50"
RUN lib=$(ls /usr/lib/x86_64-linux-gnu/libnvinfer.so.10.*.* | head -n 1); \
    if [ "${lib##*libnvinfer.so.}" != "${TENSORRT_VERSION%.*}" ]; then \
        echo "TensorRT ${TENSORRT_VERSION} does not match the image's ${lib}: set --build-arg TENSORRT_VERSION"; exit 1; \
    fi
COPY docker/triton-entrypoint.sh /usr/local/bin/vitrt-triton-entrypoint
RUN chmod +x /usr/local/bin/vitrt-triton-entrypoint

ENV VITRT_MODEL=deit_small_patch16_224 VITRT_NAME=vitrt_model VITRT_COMPILE_ARGS="" VITRT_EXPORT_ARGS=""
EXPOSE 8000 8001 8002
ENTRYPOINT ["/usr/local/bin/vitrt-triton-entrypoint"]
