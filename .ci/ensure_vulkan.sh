#!/usr/bin/env bash
# Make sure a Vulkan driver (ICD) exists so the wgpu backend and its tests run on CPU-only CI machines.
# Installs Mesa's lavapipe (mesa-vulkan-drivers) only when no ICD manifest is present. Quiet, non-interactive.
set -euo pipefail
shopt -s nullglob
icds=(/usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json /usr/local/share/vulkan/icd.d/*.json)
if (( ${#icds[@]} > 0 )); then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_vulkan: no Vulkan ICD found and no apt-get; wgpu tests will skip" >&2
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ensure_vulkan: no Vulkan ICD found and not root; wgpu tests will skip" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers >/dev/null
