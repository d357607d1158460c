#!/usr/bin/env bash
# Installs the real DICOM peers the integration tests talk to, from Debian's packages.
set -euo pipefail
needed=()
command -v storescp >/dev/null 2>&1 || needed+=(dcmtk)
# A real syslog peer for the audit trail tests, with TLS support.
[ -x /usr/sbin/rsyslogd ] || needed+=(rsyslog)
compgen -G "/usr/lib/*/rsyslog/lmnsd_gtls.so" >/dev/null || needed+=(rsyslog-gnutls)
command -v openssl >/dev/null 2>&1 || needed+=(openssl)
# `ss` reads the acceptor's listen backlog (test_acceptor_dos).
command -v ss >/dev/null 2>&1 || needed+=(iproute2)
# A real Prometheus scraping the router, and promtool for the alert rules.
command -v prometheus >/dev/null 2>&1 || needed+=(prometheus)
# The load balancer in front of two router cells (scale-out test).
command -v haproxy >/dev/null 2>&1 || needed+=(haproxy)
# A real archive (C-FIND/C-GET/C-MOVE and storage commitment SCP) for the proxy tests.
[ -x /usr/sbin/Orthanc ] || needed+=(orthanc)
# GDCM's gdcmscu, a second independent DICOM stack as a sender (tests/integration/
# test_interop_senders.py).
command -v gdcmscu >/dev/null 2>&1 || needed+=(libgdcm-tools)
# Its DICOMweb plugin, for the STOW-RS destination tests.
compgen -G "/usr/share/orthanc/plugins/libOrthancDicomWeb*" >/dev/null || needed+=(orthanc-dicomweb)
# `kubectl kustomize` renders ops/kubernetes; Debian's kubernetes-client has it.
command -v kubectl >/dev/null 2>&1 || needed+=(kubernetes-client)
# A real headless browser for the console's tests (Playwright drives it; no browser download).
[ -x /usr/bin/chromium ] || needed+=(chromium)
if [ ${#needed[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need root to apt-get install ${needed[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The tests start their own Prometheus and HAProxy on free loopback ports: the packages'
# services must not start on install (they would hold 9090 and run until reboot).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
fi
trap 'if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -q
apt-get install -y -q --no-install-recommends "${needed[@]}"
