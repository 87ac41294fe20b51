#!/usr/bin/env bash
# GPU smoke test: one fold of the image model (EfficientNet-B3 fine-tuned, configs/gpu.yaml) and one fold of
# CoCa (configs/gpu.yaml: dim 512, 6+6 layers, EfficientNet-B3 trained inside) on the demo data, then the
# measured training images/s and seconds per epoch of each - the figures docs/models.md estimates.
#
#   bench/gpu_smoke.sh [DATA_DIR]            (default data/flipkart; every GPU torch sees, DDP when several)
#   WEIGHTS=/path/efficientnet_b3.bin bench/gpu_smoke.sh     ImageNet weights (a timm state dict); without
#                                                            them the backbone starts from random weights
#                                                            (the same speed: throughput does not depend on them)
#   EPOCHS=2 bench/gpu_smoke.sh              epochs per model (default 2; the first, with its warm-up, is not
#                                            counted in the speeds when there are more)
#
# Without a GPU it prints why and exits 0 (nothing to measure). Outputs go to a temporary workdir.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DATA="$(cd "${1:-$REPO/data/flipkart}" && pwd)"
EPOCHS="${EPOCHS:-2}"

GPUS=$("$REPO/run.sh" python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [[ "$GPUS" == "0" ]]; then
  echo "gpu_smoke: skipped - torch sees no GPU on this machine (torch.cuda.is_available() is False);"
  echo "           run it on a machine with an NVIDIA GPU and a CUDA build of torch."
  exit 0
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/prodcat_gpu_smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
"$REPO/run.sh" python -c "import torch; print('gpu_smoke:', torch.cuda.device_count(), 'x', torch.cuda.get_device_name(0), '- torch', torch.__version__)"

if [[ -n "${WEIGHTS:-}" ]]; then
  IMG_W=(--set "models.image.weights=$WEIGHTS" --set "models.coca.image_encoder.weights=$WEIGHTS")
else
  IMG_W=(--set models.image.pretrained=false --set models.coca.image_encoder.pretrained=false)
  echo "gpu_smoke: no WEIGHTS given - EfficientNet-B3 starts from random weights (same speed)"
fi
COMMON=(--config "$REPO/configs/gpu.yaml" --data "$DATA" --workdir "$WORK" "${IMG_W[@]}"
        --set "models.image.epochs=$EPOCHS" --set "models.coca.stage1_epochs=$EPOCHS"
        --set "models.coca.stage2_epochs=$EPOCHS")

for MODEL in image coca; do
  START=$(date +%s)
  "$REPO/run.sh" train "$MODEL" --fold 0 "${COMMON[@]}"
  echo "gpu_smoke: $MODEL fold 0 took $(( $(date +%s) - START )) s (imports, photo checks, training, held-out predictions)"
done

"$REPO/run.sh" python - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
for model, parts in (("image", [None]), ("coca", ["stage1", "stage2"])):
    stats = json.loads(next((work / "models").glob(f"*/{model}/fold0/stats.json")).read_text())
    for part in parts:
        s = stats if part is None else stats[part]
        label = model if part is None else f"{model} {part}"
        unit = "feature rows" if part == "stage2" and stats["stage2"].get("mode") == "mlp" else "images"
        print(f"gpu_smoke: {label:<13} {s.get('samples_per_s')} training {unit}/s, {s.get('s_per_epoch')} s per epoch, "
              f"{s.get('wall_s_per_step')} s per step ({s.get('processes')} process(es), {s.get('epochs')} epochs)")
EOF
