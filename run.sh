#!/usr/bin/env bash
# One command: install, generate the synthetic dataset, train the default model, export test frames, run inference.
# Extra arguments go to main.py (bash run.sh --epochs 1). The packages go into the active virtual or conda
# environment, else into ./.venv (made on first use; VIDEOLAB_VENV=DIR puts it elsewhere): see tools/python_env.sh.
set -euo pipefail
cd "$(dirname "$0")"
source tools/python_env.sh
project_python
# exactly the tested versions (constraints.txt is a full lock; --no-deps so nothing else is pulled in)
"$PYTHON" -m pip install -q --no-deps -r constraints.txt -e .
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}   # nothing here needs the Hub; unset to let --pretrained download
"$PYTHON" main.py "$@"
"$PYTHON" create_dummy.py
"$PYTHON" inference.py --video_dir ./frames_see/
echo "done; python environment: $("$PYTHON" -c "import sys; print(sys.prefix)")"
