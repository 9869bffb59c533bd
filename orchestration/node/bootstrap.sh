#!/usr/bin/env bash
# workpool node bootstrap: the Azure Batch start task of a workpool pool runs this on every node,
# as the pool's admin auto-user, in the start task's working directory, where Batch has already
# downloaded the resource files (this script and the project wheel `launch` uploaded).
#
# The start task's command line has already checked the sha256 of this script, the wheel and the
# constraints file against what `launch` uploaded (orchestration/backends/azure_batch_bodies.py).
#
#   1. find a Python >= 3.11 with venv support, or install one (apt python3.X-venv; else uv);
#   2. create a virtualenv for exactly this install (wheel, extras, constraints) in
#      $AZ_BATCH_NODE_SHARED_DIR/workpool/venvs/<key> and point .../workpool/venv at it;
#   3. install the wheel with its extras ($WORKPOOL_NODE_EXTRAS, default "gpu": tensorflow[and-cuda]),
#      or $WORKPOOL_NODE_PACKAGE when the user pinned an override, under the constraints
#      ($WORKPOOL_NODE_CONSTRAINTS: the dependency versions `launch` ran with);
#   4. check the accelerator: when `nvidia-smi -L` lists GPUs and TensorFlow sees none, or the VM is a
#      GPU size ($WORKPOOL_VM_SIZE) with no GPU listed, fail with a message that says so.
#
# Re-runs are safe: Batch may run a start task again without a reboot, under a running consumer.
# A virtualenv that already holds this install is kept as it is (no `venv --clear`); a different
# install goes into a new folder and the `venv` link moves over atomically, so a running consumer
# keeps the files it started from.
#
# Environment: WORKPOOL_NODE_WHEEL (file name of the wheel next to this script),
# WORKPOOL_NODE_CONSTRAINTS (file name of the pip constraints next to it), WORKPOOL_NODE_PACKAGE
# (override), WORKPOOL_NODE_EXTRAS, WORKPOOL_VM_SIZE, WORKPOOL_ALLOW_CPU (skip step 4's refusal).
# Needs no network beyond apt (only when no suitable Python is installed) and pip's index or cache.
set -euo pipefail

# Progress (apt, pip) goes to stdout; stderr carries this script's own lines and the errors, so
# its tail, which `orchestration status` shows for a failed node, says what went wrong.
say() { printf 'workpool-bootstrap: %s\n' "$*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}

: "${AZ_BATCH_NODE_SHARED_DIR:?is not set: this script runs as an Azure Batch start task}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$AZ_BATCH_NODE_SHARED_DIR/workpool/venv"
EXTRAS="${WORKPOOL_NODE_EXTRAS-gpu}"
PIP_FLAGS=(--no-input --disable-pip-version-check --progress-bar off)

# --- 1. Python >= 3.11 with venv (Debian/Ubuntu split ensurepip into python3.X-venv) --------------
usable() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && usable "$(command -v "$candidate")"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

install_with_apt() {
    command -v apt-get >/dev/null 2>&1 || return 1
    [ "$(id -u)" = 0 ] || { say "not root: cannot apt-get install a Python"; return 1; }
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 -y -q)
    export DEBIAN_FRONTEND=noninteractive
    "${apt[@]}" update || return 1
    local version
    for version in 3.13 3.12 3.11; do
        if apt-cache show "python$version-venv" >/dev/null 2>&1; then
            say "installing python$version and python$version-venv with apt"
            "${apt[@]}" install --no-install-recommends "python$version" "python$version-venv" && return 0
        fi
    done
    return 1
}

# --- what to install, and the folder that holds exactly that ---------------------------------------
CONSTRAINT_ARGS=()
if [ -n "${WORKPOOL_NODE_CONSTRAINTS:-}" ]; then
    constraints="$HERE/$WORKPOOL_NODE_CONSTRAINTS"
    [ -f "$constraints" ] || fail "the constraints file $WORKPOOL_NODE_CONSTRAINTS was not downloaded next to this script"
    CONSTRAINT_ARGS=(--constraint "$constraints")
fi
if [ -n "${WORKPOOL_NODE_PACKAGE:-}" ]; then
    target="$WORKPOOL_NODE_PACKAGE"
    shown="the override WORKPOOL_NODE_PACKAGE (${target%%\?*})"
    identity="package $target"
else
    [ -n "${WORKPOOL_NODE_WHEEL:-}" ] || fail "WORKPOOL_NODE_WHEEL is not set: which wheel should be installed?"
    wheel="$HERE/$WORKPOOL_NODE_WHEEL"
    [ -f "$wheel" ] || wheel="$PWD/$WORKPOOL_NODE_WHEEL"
    [ -f "$wheel" ] || fail "the wheel $WORKPOOL_NODE_WHEEL was not downloaded next to this script (resource file missing?)"
    target="$wheel"
    [ -z "$EXTRAS" ] || target="$wheel[$EXTRAS]"
    shown="$WORKPOOL_NODE_WHEEL${EXTRAS:+ with extras [$EXTRAS]}"
    identity="wheel $(sha256sum "$wheel" | cut -d ' ' -f 1)"
fi
identity="$identity extras=$EXTRAS"
[ -z "${constraints:-}" ] || identity="$identity constraints=$(sha256sum "$constraints" | cut -d ' ' -f 1)"
KEY="$(printf '%s' "$identity" | sha256sum | cut -c 1-16)"
HOME_DIR="$AZ_BATCH_NODE_SHARED_DIR/workpool"
TARGET_VENV="$HOME_DIR/venvs/$KEY"
READY="$TARGET_VENV/.workpool-ready"

if [ -f "$READY" ] && [ -x "$TARGET_VENV/bin/consumer" ]; then
    say "keeping $TARGET_VENV: it already holds $shown (a re-run of the start task)"
else
    # --- 1. a Python, 2. a fresh virtualenv of its own (never one a consumer may be running from) ---
    PYTHON="$(find_python || true)"
    if [ -z "$PYTHON" ]; then
        say "no Python >= 3.11 with venv support found ($(python3 --version 2>&1 || echo 'no python3'))"
        install_with_apt || say "apt could not provide one"
        PYTHON="$(find_python || true)"
    fi
    # Not ready means never completed: no consumer runs from it, so it may be made afresh.
    rm -rf "$TARGET_VENV"
    mkdir -p "$HOME_DIR/venvs"
    if [ -n "$PYTHON" ]; then
        say "using $PYTHON ($("$PYTHON" --version 2>&1))"
        "$PYTHON" -m venv "$TARGET_VENV" || fail "$PYTHON -m venv $TARGET_VENV failed"
    else
        # Last resort (images without apt or without a 3.11+ package): uv fetches a standalone CPython.
        say "falling back to uv for a standalone Python 3.12"
        UV_HOME="$HOME_DIR/uv"
        if ! command -v uv >/dev/null 2>&1; then
            python3 -m pip install "${PIP_FLAGS[@]}" --target "$UV_HOME" uv ||
                fail "no Python >= 3.11 with venv support, apt could not install one, and uv could not be installed"
            export PATH="$UV_HOME/bin:$PATH" PYTHONPATH="$UV_HOME${PYTHONPATH:+:$PYTHONPATH}"
        fi
        export UV_PYTHON_INSTALL_DIR="$HOME_DIR/python"
        uv venv --seed --python 3.12 "$TARGET_VENV" || fail "uv could not create a Python 3.12 virtualenv"
    fi

    # --- 3. install the project ---------------------------------------------------------------------
    say "installing $shown${CONSTRAINT_ARGS[*]:+ under the constraints of launch}"
    "$TARGET_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "${CONSTRAINT_ARGS[@]}" "$target" ||
        fail "pip could not install ${target%%\?*}"
    [ -x "$TARGET_VENV/bin/consumer" ] || fail "the installed package has no consumer command in $TARGET_VENV/bin"
    touch "$READY"
fi

# Point the consumers' path at it: a new link renamed over the old one (atomic; running consumers
# keep the folder they started from). An old layout's real folder is moved aside, never cleared.
if [ -d "$VENV" ] && [ ! -L "$VENV" ]; then
    mv "$VENV" "$VENV.old-$$"
fi
ln -sfn "venvs/$KEY" "$VENV.link-$$"
mv -T "$VENV.link-$$" "$VENV"
chmod -R a+rX "$HOME_DIR"

# --- 4. the accelerator ----------------------------------------------------------------------------
if [ "${WORKPOOL_ALLOW_CPU:-false}" = "true" ]; then
    "$TARGET_VENV/bin/python" -m consumer.accelerator --allow-cpu || true
else
    "$TARGET_VENV/bin/python" -m consumer.accelerator || fail "accelerator check (see the line above)"
fi
say "ready: $VENV/bin/consumer"
