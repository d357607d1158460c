#!/usr/bin/env bash
# Runs the whole suite: everything but the `serial` tests on two pytest-xdist workers (one
# per core; most tests wait on real peers and processes, so two at a time take about half
# the wall time), then the `serial` ones alone, since they read machine-wide TCP counters.
# pytest's exit 5 ("no tests collected") must fail, never pass as green: the run fails
# unless at least one of the two parts ran tests and neither failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export TCP_NODELAY=1   # DCMTK's tools use Nagle otherwise: ~40 ms per C-STORE on loopback
WORKERS="${TEST_WORKERS:-2}"
# Byte-compile the project once. The suite starts a few hundred routers of five processes
# each, and every process imports the router's modules: where PYTHONDONTWRITEBYTECODE is set
# (CI images often set it) each would compile them from source again, ~0.3 s of CPU per
# process and ~0.7 s per router start on 2 cores. compileall writes regardless of it.
.venv/bin/python -m compileall -q -j 2 router workers tests loadtest > /dev/null
# --durations: the slowest tests, to keep the suite within its 15 minutes on 2 cores.
# --dist loadfile: a file's tests stay on one worker (its module-scoped peers start once).
.venv/bin/python -m pytest -n "$WORKERS" --dist loadfile -m "not serial" --durations=20 "$@"
parallel=$?
.venv/bin/python -m pytest -m serial "$@"
serial=$?
for rc in $parallel $serial; do
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        exit "$rc"
    fi
done
if [ "$parallel" -eq 5 ] && [ "$serial" -eq 5 ]; then
    echo "run-tests: pytest collected no tests; failing" >&2
    exit 1
fi
exit 0
