# Sourced by quickstart.sh and test.sh: pick the project's Python environment and set $PY to it.
#
# An active virtual environment ($VIRTUAL_ENV) is used as it is; otherwise the project's own `.venv/`
# (reused when present, created when not). Nothing is ever installed into a system Python: on
# Debian/Ubuntu that is refused anyway (PEP 668, "externally-managed-environment"). The venv sees the
# system's site-packages, so a torch that is already installed (GBs) is reused rather than downloaded
# again; everything else is installed into the venv. Supported: Python 3.11, 3.12 and 3.13.
# CKPT_SYNC_SETUP_ONLY=1 stops the calling script right after this step (the set-up tests use it).

ckpt_sync_python_ok() {  # is "$1" a Python 3.11-3.13?
    "$1" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null
}

ckpt_sync_venv() {
    local venv base candidate version
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        venv="$VIRTUAL_ENV"
        if ! ckpt_sync_python_ok "$venv/bin/python"; then
            version="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo '?')"
            echo "ckpt-sync: error: the active virtual environment $venv has Python $version; ckpt-sync needs 3.11-3.13 (deactivate it, or activate another)" >&2
            return 1
        fi
        echo "ckpt-sync: using the active virtual environment $venv"
    else
        venv="$PWD/.venv"
        if [ -x "$venv/bin/python" ] && ckpt_sync_python_ok "$venv/bin/python"; then
            echo "ckpt-sync: using the virtual environment $venv (reused; activate it with: source .venv/bin/activate)"
        else
            base=""
            for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
                if command -v "$candidate" >/dev/null 2>&1 && ckpt_sync_python_ok "$candidate"; then
                    base="$candidate"
                    break
                fi
            done
            if [ -z "$base" ]; then
                version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 'none')"
                echo "ckpt-sync: error: ckpt-sync needs Python 3.11-3.13 (python3 on PATH: $version); install one, e.g. sudo apt install python3.12 python3.12-venv, or set PYTHON=/path/to/python3.12" >&2
                return 1
            fi
            version="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
            # Debian/Ubuntu split venv's pip bootstrap (ensurepip) into a package of its own.
            if ! "$base" -c 'import ensurepip, venv' >/dev/null 2>&1; then
                echo "ckpt-sync: error: $(command -v "$base") cannot create a virtual environment (no ensurepip): install it with: sudo apt install python$version-venv" >&2
                return 1
            fi
            if [ -e "$venv" ]; then
                echo "ckpt-sync: $venv is not a usable Python 3.11-3.13 environment: recreating it"
                rm -rf "$venv"
            fi
            if ! "$base" -m venv --system-site-packages "$venv"; then
                rm -rf "$venv"
                echo "ckpt-sync: error: could not create a virtual environment in $venv with $(command -v "$base") (on Debian/Ubuntu: sudo apt install python$version-venv)" >&2
                return 1
            fi
            echo "ckpt-sync: created the virtual environment $venv (Python $version; activate it with: source .venv/bin/activate)"
        fi
    fi
    PY="$venv/bin/python"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
}
