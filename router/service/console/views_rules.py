"""The rules page (the running config with secrets masked, and the rule tester, which runs
`dicom-router route-test`'s own `explain`), and the audit page (recent audit events and
refused associations)."""

from __future__ import annotations

from typing import Any

import yaml

from router.core.config import RouterConfig
from router.service.console.audit_tail import NOTABLE_MAX, RECENT_MAX, SCAN_MAX, read_tail
from router.service.console.auth import Identity
from router.service.console.forms import Posted
from router.service.console.html import button, e, field, form, page, table
from router.service.http_types import Response
from router.service.metric_samples import Samples, by_label
from router.service.route_preview import explain

HTML = "text/html; charset=utf-8"
# A key is a secret when one of its words ('_'-separated) is one of these; `private_key` and
# `api_key` too. The config's `key`/`tls_key` are paths to key files: they stay, as do keys
# whose last word says they name something else (`token_role`, `password_file`).
SECRET_WORDS = frozenset({"password", "passcode", "passphrase", "secret", "token", "hash",
                          "apikey"})
SECRET_KEYS = frozenset({"private_key", "api_key"})
NOT_SECRET_LAST_WORDS = frozenset({"file", "env", "role", "path"})
# The tester reads only the header, but a browser uploads the whole file: room for most
# single-frame instances (CR, DX, mammography); larger ones with `dicom-router route-test`.
UPLOAD_MAX = 64 * 1024**2


def masked(value: Any, key: str = "") -> Any:
    """The config as data with secrets (and commands that may carry them) replaced; paths
    and names of environment variables stay, they say where a secret is, not what."""
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    return "***" if value is not None and _secret(key) else value


def _secret(key: str) -> bool:
    lowered = key.lower()
    words = lowered.split("_")
    if words[-1] == "command":  # a command may carry its secret as an argument
        return True
    if words[-1] in NOT_SECRET_LAST_WORDS:
        return False
    return bool(SECRET_WORDS.intersection(words)) or lowered.endswith(tuple(SECRET_KEYS))


def rules(identity: Identity, config: RouterConfig, message: str,
          result: list[str] | None = None) -> Response:
    data = masked(config.model_dump(mode="json", by_alias=True))  # `continue`, not continue_
    text = yaml.safe_dump(data, sort_keys=False)
    tester = form("/console/rules/test", identity, "".join([
        '<label>DICOM file <input type="file" name="file" required></label>',
        field("calling_ae", "Calling AE", "STORESCU"),
        field("called_ae", "Called AE", config.ae_title),
        field("source", "Source address", "127.0.0.1"),
        button("Test")]), extra='enctype="multipart/form-data" class="tester"')
    outcome = f'<pre id="tester-result">{e(chr(10).join(result))}</pre>' if result else ""
    body = (f"<h2>Rule tester</h2><p>Which rules match a file, and what would be sent where"
            f" (morphed, de-identified, transcoded); nothing is sent.</p>{tester}{outcome}"
            f"<h2>Running config (secrets masked)</h2><pre class=config>{e(text)}</pre>")
    return Response(200, page("Rules", body, identity, message, script=True), HTML)


def test(identity: Identity, config: RouterConfig, posted: Posted) -> Response:
    upload = posted.files.get("file")
    if upload is None or upload[1].stat().st_size == 0:
        return rules(identity, config, "choose a DICOM file to test")
    fields = posted.fields
    shown, path = upload[0][:200] or "the upload", upload[1]  # the client's name: shown only
    try:
        lines = explain(config, path, fields.get("calling_ae") or "STORESCU",
                        fields.get("called_ae") or config.ae_title,
                        fields.get("source") or "127.0.0.1")
    except Exception as exc:  # route-test says the same for a file it cannot read
        lines = [f"{shown}: cannot be read as DICOM: {exc}"]
    lines[0] = lines[0].replace(str(path), shown)
    return rules(identity, config, "", lines)


def _row(event: dict[str, Any]) -> list[str]:
    ident = event.get("EventIdentification", {})
    kinds = ", ".join(t.get("originalText", "") for t in ident.get("EventTypeCode", []))
    who = event.get("ActiveParticipant", [{}])
    requestor = next((p for p in who if p.get("UserIsRequestor")), who[0] if who else {})
    outcome = {"0": "ok", "4": "refused/failed", "8": "failed", "12": "failed"}.get(
        str(ident.get("EventOutcomeIndicator")), "?")
    return [e(ident.get("EventDateTime", "")), e(ident.get("EventID", {}).get("originalText")),
            e(kinds), e(outcome), e(requestor.get("UserID", "")),
            e(requestor.get("NetworkAccessPointID", "")),
            e(ident.get("EventOutcomeDescription", ""))]


def _refused(event: dict[str, Any]) -> bool:
    ident = event.get("EventIdentification", {})
    code = ident.get("EventID", {}).get("csd-code")
    types = {t.get("csd-code") for t in ident.get("EventTypeCode", [])}
    return (code == "110113" and "110126" in types) or \
        (code == "110114" and ident.get("EventOutcomeIndicator") == "4")


def audit(identity: Identity, config: RouterConfig, samples: Samples) -> Response:
    headers = ["Time", "Event", "Type", "Outcome", "Who", "From", "Description"]
    counts = by_label(samples, "dicom_router_association_rejections_total", "reason")
    body = "<h2>Refused associations since start</h2>" + table(
        ["Reason", "Count"], [[e(k), e(f"{v:.0f}")] for k, v in sorted(counts.items()) if v])
    if not config.audit.enabled:
        body += ("<p>The audit trail is off (<code>audit.enabled</code>): enable it to see "
                 "operator actions, logins and refused associations here.</p>")
        return Response(200, page("Audit", body, identity), HTML)
    tail = read_tail(config.audit.path)
    body += "<h2>Refused associations (audit trail)</h2>" + table(
        headers, [_row(ev) for ev in tail.notable if _refused(ev)][:50])
    body += (f"<h2>Operator actions, logins and refusals (last {NOTABLE_MAX})</h2>"
             + table(headers, [_row(ev) for ev in tail.notable], "audit"))
    if not tail.whole:
        body += (f"<p>Read from the last {SCAN_MAX // 1024**2} MiB of the audit file only; "
                 f"older events are in <code>{e(str(config.audit.path))}</code>.</p>")
    body += (f"<h2>Latest audit events of every kind (last {RECENT_MAX})</h2>"
             + table(headers, [_row(ev) for ev in tail.recent]))
    return Response(200, page("Audit", body, identity), HTML)
