#!/usr/bin/env bash
# The system packages the tests and extras use, from Debian's/Ubuntu's archive (apt-get; root or sudo):
#   Java 17     pycocoevalcap's METEOR and PTB tokenizer (caption metrics)        -> default-jre-headless
#   FFmpeg      torchcodec's decoding libraries (the video extra)                 -> ffmpeg
#   Chromium    tests/test_demo.py drives it headless through Playwright          -> chromium
#   venv        run.sh makes its virtual environment with python3 -m venv         -> python3-venv
# Installs only what is missing; without apt-get it prints what to install and exits 0 (the tests that need a
# missing one skip, saying so). .ci/run calls this.
set -euo pipefail
declare -A NEED=()
command -v java >/dev/null 2>&1 || NEED[default-jre-headless]=1
command -v ffmpeg >/dev/null 2>&1 || NEED[ffmpeg]=1
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || NEED[chromium]=1
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || NEED[python3-venv]=1
if [ ${#NEED[@]} -eq 0 ]; then
    echo "system packages: java, ffmpeg, chromium and python3-venv are present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages: no apt-get here; install ${!NEED[*]} (Java 17, FFmpeg, Chromium, venv) by other means" >&2
    exit 0
fi
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
echo "system packages: installing ${!NEED[*]}"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${!NEED[@]}"
