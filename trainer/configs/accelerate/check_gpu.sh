#!/usr/bin/env bash
# The GPU-only training paths (NCCL DDP, FSDP2 on CUDA, DeepSpeed ZeRO-3) against the one-process
# run, on a GPU node with at least 2 GPUs. CI cannot run it (no GPU); run it on the node:
#   bash trainer/configs/accelerate/check_gpu.sh [MODEL_DIR] [NUM_GPUS]
# MODEL_DIR: a small HF Llama (default: a random 2-layer one built here). Prints a table and
# writes parity-gpu/parity.json; exits 1 on a mismatch.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
GPUS=${2:-2}
OUT=parity-gpu
mkdir -p "$OUT"
MODEL=${1:-}
if [ -z "$MODEL" ]; then
  MODEL=$OUT/tiny-llama
  make checkpoint >/dev/null  # the default version's tokenizer and chat template
  "$PY" - "$MODEL" <<'PYEOF'
import sys
from pathlib import Path
from service.checkpoint.store import CheckpointRoot
from tests.conftest import build_tiny_llama
version = CheckpointRoot(Path("checkpoints")).resolve(verify_hashes=False)
build_tiny_llama(Path(sys.argv[1]), version.generator_path, hidden_size=64,
                 intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32)
PYEOF
fi
CONFIGS=()
for c in gpu_ddp fsdp_8b_1node zero3_8b_1node; do
  sed "s/^num_processes: .*/num_processes: $GPUS/" "trainer/configs/accelerate/$c.yaml" > "$OUT/$c.yaml"
  CONFIGS+=("$OUT/$c.yaml")
done
for kind in lora full; do
  "$PY" -m trainer.parity check --model "$MODEL" --kind "$kind" \
    --configs "$(IFS=,; echo "${CONFIGS[*]}")" --out "$OUT/$kind"
done
