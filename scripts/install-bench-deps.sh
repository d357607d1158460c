#!/usr/bin/env bash
# Installs what `python -m loadtest.bench` needs when it is missing:
# DCMTK (storescu/storescp, the wire baseline and the destination), Orthanc (the
# comparison auto-router; run by the bench with its own config, never as the system
# service), matplotlib (the chart) and py-spy (loadtest.profile) in the project's venv.
set -euo pipefail
VENV=${VENV:-.venv}
needed=()
command -v storescp >/dev/null 2>&1 || needed+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || needed+=(orthanc)
if [ ${#needed[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-bench-deps: need root to apt-get install ${needed[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # policy-rc.d: do not let the package start Orthanc's system service.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get install -y -q --no-install-recommends "${needed[@]}" || status=$?
    [ "$created_policy" -eq 1 ] && rm -f "$policy"
    [ "${status:-0}" -eq 0 ] || exit "${status}"
fi
if ! "$VENV/bin/python" -c 'import matplotlib' >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q matplotlib
fi
# py-spy: the profiler behind `python -m loadtest.profile` (flame graphs per process).
[ -x "$VENV/bin/py-spy" ] || "$VENV/bin/python" -m pip install -q py-spy
