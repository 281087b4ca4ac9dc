#!/usr/bin/env bash
# Compile (once, on this GPU) -> export the Triton repository -> exec tritonserver with its native backends.
set -euo pipefail
out="/models/build/${VITRT_NAME}"
repo="/models/repo"
if [ ! -f "${out}/model.plan" ]; then
    # the optimisation profile the README states (batch 1..64, tuned for 8); later flags in VITRT_COMPILE_ARGS win
    # shellcheck disable=SC2086  # VITRT_COMPILE_ARGS holds several flags, e.g. "--precision fp16 --tome 13"
    vitrt compile "${VITRT_MODEL}" -o "${out}" --backend trt --dynamic-batch --min-batch 1 --batch 8 --max-batch 64 \
        --force ${VITRT_COMPILE_ARGS}
fi
# shellcheck disable=SC2086
vitrt export triton "${out}" -o "${repo}" --name "${VITRT_NAME}" --force ${VITRT_EXPORT_ARGS}
exec tritonserver --model-repository "${repo}" --exit-timeout-secs 30 --strict-readiness true "$@"
