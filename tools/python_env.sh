# Sourced by run.sh and .ci/run: sets PYTHON to the interpreter of the project environment and says which it is.
#
#   inside a virtual environment (venv, virtualenv) or an activated conda env  ->  that environment's python
#   otherwise                                                                  ->  the project's own venv,
#                                      $VIDEOLAB_VENV (default: ./.venv), made with `python3 -m venv` on first use
#
# Nothing is ever installed into a system Python: one marked "externally managed" (PEP 668: Debian's and Ubuntu's
# python3) refuses pip installs, and any other belongs to its user. A venv is never externally managed.
# VIDEOLAB_VENV_ARGS adds options to `python3 -m venv` (.ci/run passes --system-site-packages, so packages
# already installed at the pinned versions are reused instead of downloaded again). VIDEOLAB_BASE_PYTHON picks
# the interpreter the venv is made from (default: python3).
project_python() {
    local base=${VIDEOLAB_BASE_PYTHON:-python3} prefix venv
    if ! command -v "$base" >/dev/null 2>&1; then
        echo "no $base found: install Python 3.10 or newer (apt-get install python3 python3-venv)" >&2
        return 1
    fi
    prefix=$("$base" -c 'import sys; print(sys.prefix)')
    if "$base" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        PYTHON=$(command -v "$base")
        echo "python environment: $prefix (the active virtual environment)" >&2
    elif [ -n "${CONDA_PREFIX:-}" ] && [ "$prefix" -ef "$CONDA_PREFIX" ]; then
        PYTHON=$(command -v "$base")
        echo "python environment: $prefix (the active conda environment)" >&2
    else
        venv=${VIDEOLAB_VENV:-$PWD/.venv}
        if [ ! -x "$venv/bin/python" ]; then
            echo "python environment: creating $venv (python3 -m venv ${VIDEOLAB_VENV_ARGS:-})" >&2
            # shellcheck disable=SC2086  # VIDEOLAB_VENV_ARGS holds separate options
            if ! "$base" -m venv ${VIDEOLAB_VENV_ARGS:-} "$venv"; then
                echo "could not create the virtual environment $venv; on Debian/Ubuntu: apt-get install python3-venv" >&2
                return 1
            fi
        fi
        PYTHON=$venv/bin/python
        echo "python environment: $venv (activate it with: source $venv/bin/activate)" >&2
    fi
    export PYTHON
}
