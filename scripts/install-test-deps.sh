#!/usr/bin/env bash
# Installs the real DICOM peers the integration tests talk to, from Debian's packages.
set -euo pipefail
needed=()
command -v storescp >/dev/null 2>&1 || needed+=(dcmtk)
# A real syslog peer for the audit trail tests, with TLS support.
[ -x /usr/sbin/rsyslogd ] || needed+=(rsyslog)
compgen -G "/usr/lib/*/rsyslog/lmnsd_gtls.so" >/dev/null || needed+=(rsyslog-gnutls)
command -v openssl >/dev/null 2>&1 || needed+=(openssl)
if [ ${#needed[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need root to apt-get install ${needed[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${needed[@]}"
