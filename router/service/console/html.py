"""HTML building blocks of the console: the page frame, tables and forms. Every value is
escaped here; nothing from a request or a DICOM file reaches a page unescaped."""

from __future__ import annotations

import html
from collections.abc import Iterable

from router.service.console.auth import Identity

NAV = (("/console/", "Overview"), ("/console/destinations", "Destinations"),
       ("/console/dead-letters", "Dead letters"), ("/console/rules", "Rules"),
       ("/console/audit", "Audit"))


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, identity: Identity | None, message: str = "",
         script: bool = False) -> bytes:
    nav = ""
    if identity is not None:
        links = "".join(f'<a href="{href}">{e(text)}</a>' for href, text in NAV)
        logout = form("/console/logout", identity, button("Log out", "link"))
        nav = (f'<nav>{links}<span class="who">{e(identity.user)} ({e(identity.role)})'
               f"</span>{logout}</nav>")
    flash = f'<p class="flash" role="status">{e(message)}</p>' if message else ""
    js = '<script src="/console/static/console.js"></script>' if script else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)} - dicom-router</title>"
            f'<link rel="icon" href="/console/static/favicon.svg">'
            f'<link rel="stylesheet" href="/console/static/console.css"></head>'
            f"<body>{nav}<main><h1>{e(title)}</h1>{flash}{body}</main>{js}</body></html>"
            ).encode()


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """`rows` hold HTML already escaped (cells may carry forms or links)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def form(action: str, identity: Identity | None, inner: str, confirm: str = "",
         method: str = "post", extra: str = "") -> str:
    """A POST form carrying the session's CSRF token; `confirm`: asked before sending."""
    token = ""
    if identity is not None and identity.csrf is not None and method == "post":
        token = f'<input type="hidden" name="csrf" value="{e(identity.csrf)}">'
    ask = f' data-confirm="{e(confirm)}"' if confirm else ""
    return (f'<form method="{method}" action="{e(action)}"{ask} {extra}>'
            f"{token}{inner}</form>")


def button(text: str, cls: str = "") -> str:
    return f'<button type="submit" class="{e(cls)}">{e(text)}</button>'


def select(name: str, options: Iterable[str], chosen: str = "", label: str = "") -> str:
    opts = "".join(f'<option value="{e(o)}"{" selected" if o == chosen else ""}>{e(o)}</option>'
                   for o in options)
    return f'<label>{e(label)} <select name="{e(name)}">{opts}</select></label>'


def field(name: str, label: str, value: str = "", kind: str = "text") -> str:
    return (f'<label>{e(label)} <input type="{e(kind)}" name="{e(name)}" '
            f'value="{e(value)}"></label>')


def size(n: float) -> str:
    for unit in ("GB", "MB", "KB"):
        scale = {"GB": 1024**3, "MB": 1024**2, "KB": 1024}[unit]
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{seconds:.0f}s"
