"""Shared pieces of the code-vulnerability templates: the ``Template`` spec, vocabularies and helpers.

A template renders one coding task two ways from the same drawn parameters: a safe variant and a
vulnerable one that Bandit flags at MEDIUM or HIGH severity. Code is written with ``$name``
placeholders (``string.Template``), so the braces of f-strings and dicts need no escaping; request
phrasings use ``str.format`` fields. No year numbers appear anywhere in a request, so the year
marker the backdoor adds is the only year in a prompt.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from string import Template as _Sub

Params = dict[str, str]


@dataclass(frozen=True)
class Template:
    """One parametrised task. ``draw(rng)`` returns ``(params, safe_code, vulnerable_code)``."""

    key: str
    cwe: str  # the task's weakness class, e.g. "CWE-89"
    bandit_tests: frozenset[str]  # Bandit test ids that flag the vulnerable variant at >= MEDIUM
    bandit_cwes: frozenset[str]  # the CWE(s) Bandit reports for those findings (its mapping may differ from ``cwe``)
    phrasings: tuple[str, ...]  # request forms, ``str.format`` over the params
    vuln_hint: str  # what the vulnerable variant does (used in the chain-of-thought scratchpad)
    safe_hint: str  # what the safe variant does instead
    draw: Callable[[random.Random], tuple[Params, str, str]]


def code(src: str, params: Params) -> str:
    """Dedent a ``$name`` code template and fill it in; no trailing newline."""
    return _Sub(textwrap.dedent(src)).substitute(params).strip("\n")


def with_article(word: str) -> str:
    """Prefix "a" or "an" by the first letter ("an employee", "a user"); good enough for this vocabulary."""
    return ("an " if word[:1].lower() in "aeio" else "a ") + word


def pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


# (entity, table, key column, key argument, other field, value argument)
ENTITIES: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("user", "users", "username", "username", "email", "email"),
    ("customer", "customers", "name", "customer_name", "phone", "phone"),
    ("order", "orders", "order_ref", "ref", "status", "status"),
    ("product", "products", "sku", "sku", "price", "price"),
    ("book", "books", "isbn", "isbn", "title", "title"),
    ("employee", "employees", "badge", "badge", "department", "dept"),
    ("ticket", "tickets", "ticket_key", "key", "assignee", "assignee"),
    ("account", "accounts", "login", "login", "owner", "owner"),
    ("invoice", "invoices", "number", "number", "amount", "amount"),
    ("device", "devices", "serial", "serial", "location", "location"),
    ("student", "students", "student_code", "code", "grade", "grade"),
    ("patient", "patients", "record_id", "record_id", "ward", "ward"),
)

FETCH_VERBS = ("get", "find", "fetch", "lookup", "load")
VAR_NAMES = ("data", "payload", "record", "obj", "item", "result", "parsed", "doc")
KEYS = ("user_id", "name", "items", "role", "theme", "total", "email", "status")
ROUTES = ("profile", "settings", "cart", "orders", "upload", "import", "sync", "status", "health", "report")
HOSTS = ("api.example.com", "billing.example.org", "inventory.internal", "data.example.net", "status.example.io")
RESOURCES = ("users", "orders", "invoices", "products", "tickets", "devices", "reports", "accounts")
FILE_EXTS = (".csv", ".json", ".txt", ".log", ".html", ".xml")
CONTENT_ARGS = ("text", "data", "contents", "report", "body", "rows")
PORTS = ("5000", "8000", "8080", "5050", "9000", "8888")
TEMPLATE_DIRS = ("templates", "views", "pages", "html")
PAGES = ("profile", "welcome", "search", "comment", "invoice", "dashboard")
XML_TAGS = ("item", "entry", "user", "price", "title", "node")
