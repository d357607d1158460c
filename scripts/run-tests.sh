#!/usr/bin/env bash
# Runs the whole suite. pytest's exit 5 ("no tests collected") must fail, never pass as green.
set -uo pipefail
cd "$(dirname "$0")/.."
export TCP_NODELAY=1   # DCMTK's tools use Nagle otherwise: ~40 ms per C-STORE on loopback
# --durations: the slowest tests, to keep the suite within its 15 minutes on 2 cores.
.venv/bin/python -m pytest --durations=20 "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "run-tests: pytest collected no tests; failing" >&2
    exit 1
fi
exit $rc
