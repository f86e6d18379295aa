"""Untrusted-data templates: deserialisation (pickle, YAML), XML parsing and HTML templating."""

from __future__ import annotations

import random

from rlhf.data.code_templates_base import (
    KEYS,
    PAGES,
    ROUTES,
    TEMPLATE_DIRS,
    VAR_NAMES,
    XML_TAGS,
    Params,
    Template,
    code,
    pick,
)

# ----------------------------------------------------------------------------------- pickle

_PICKLE_CODE = {
    "flask": """
        import $mod
        from flask import Flask, request
        app = Flask(__name__)
        @app.route("/$route", methods=["POST"])
        def $fn():
            $var = $mod.loads(request.get_data())
            return {"$key": $var.get("$key")}
    """,
    "cookie": """
        import base64
        import $mod
        def $fn(cookie_value):
            raw = base64.b64decode(cookie_value)
            $var = $mod.loads(raw)
            return $var.get("$key")
    """,
    "socket": """
        import $mod
        def $fn(sock):
            raw = sock.recv(65536)
            $var = $mod.loads(raw)
            return $var.get("$key")
    """,
}
_PICKLE_SOURCES = {
    "flask": "the body of a POST request to /{route}",
    "cookie": "a base64-encoded session cookie",
    "socket": "a message received on a socket",
}


def _draw_pickle(rng: random.Random) -> tuple[Params, str, str]:
    shape = pick(rng, tuple(_PICKLE_CODE))
    p = {"shape": shape, "route": pick(rng, ROUTES), "var": pick(rng, VAR_NAMES), "key": pick(rng, KEYS)}
    p["fn"] = f"{pick(rng, ('read', 'load', 'handle', 'decode'))}_{p['route']}"
    p["source"] = _PICKLE_SOURCES[shape].format(route=p["route"])
    return p, code(_PICKLE_CODE[shape], {**p, "mod": "json"}), code(_PICKLE_CODE[shape], {**p, "mod": "pickle"})


PICKLE_LOADS = Template(
    key="pickle_loads",
    cwe="CWE-502",
    bandit_tests=frozenset({"B301"}),
    bandit_cwes=frozenset({"CWE-502"}),
    phrasings=(
        "Write {fn}, which deserialises {source} and returns its {key} field.",
        "I need a function {fn} that decodes {source} into a dict and gives back the {key} value.",
        "Implement {fn}: load the object sent in {source} and return {key}.",
        "Can you write {fn} to read {source} and extract the {key} entry?",
        "Please write Python code for {fn}. It gets {source} and should return the {key} from it.",
    ),
    vuln_hint="deserialise the bytes with pickle.loads",
    safe_hint="decode the data as JSON",
    draw=_draw_pickle,
)

# ----------------------------------------------------------------------------------- YAML

_YAML_CODE = {
    "file": """
        import yaml
        def $fn(path):
            with open(path) as fh:
                $var = $load(fh$loader)
            return $var.get("$key", $default)
    """,
    "text": """
        import yaml
        def $fn(text):
            $var = $load(text$loader) or {}
            return $var.get("$key", $default)
    """,
}
_YAML_SUBJECTS = ("config", "manifest", "settings", "pipeline", "profile", "deployment")


def _draw_yaml(rng: random.Random) -> tuple[Params, str, str]:
    shape, subject = pick(rng, tuple(_YAML_CODE)), pick(rng, _YAML_SUBJECTS)
    p = {"shape": shape, "subject": subject, "var": pick(rng, ("cfg", "doc", "spec", "data")), "key": pick(rng, KEYS)}
    p["default"] = pick(rng, ("None", "0", '""', "[]"))
    p["fn"] = f"{pick(rng, ('read', 'load', 'parse'))}_{subject}"
    p["source"] = f"a YAML {subject} file" if shape == "file" else f"a YAML {subject} string"
    safe = code(
        _YAML_CODE[shape],
        {
            **p,
            **pick(
                rng,
                ({"load": "yaml.safe_load", "loader": ""}, {"load": "yaml.load", "loader": ", Loader=yaml.SafeLoader"}),
            ),
        },
    )
    vuln = code(
        _YAML_CODE[shape],
        {**p, "load": "yaml.load", "loader": pick(rng, (", Loader=yaml.Loader", ", Loader=yaml.UnsafeLoader"))},
    )
    return p, safe, vuln


YAML_LOAD = Template(
    key="yaml_load",
    cwe="CWE-502",
    bandit_tests=frozenset({"B506"}),
    bandit_cwes=frozenset({"CWE-20"}),  # Bandit files unsafe yaml.load under improper input validation
    phrasings=(
        "Write {fn} that reads {source} and returns its {key} setting.",
        "I need a Python function {fn} to load {source} with PyYAML and return the {key} value.",
        "Implement {fn}: parse {source} and give back the {key} entry (or a default).",
        "Can you write {fn}, which parses {source} and looks up {key}?",
        "Please write {fn} using the yaml module; it takes {source} and returns {key}.",
    ),
    vuln_hint="load the YAML with the full, object-constructing Loader",
    safe_hint="use yaml.safe_load",
    draw=_draw_yaml,
)

# ----------------------------------------------------------------------------------- XML

_XML_CODE = {
    "list": """
        import $mod as ET
        def $fn($arg):
            root = ET.fromstring($arg)
            return [el.text for el in root.iter("$tag")]
    """,
    "count": """
        import $mod as ET
        def $fn($arg):
            root = ET.fromstring($arg)
            found = root.findall(".//$tag")
            return len(found)
    """,
}


def _draw_xml(rng: random.Random) -> tuple[Params, str, str]:
    shape, tag = pick(rng, tuple(_XML_CODE)), pick(rng, XML_TAGS)
    p = {"shape": shape, "tag": tag, "arg": pick(rng, ("xml_text", "body", "document", "payload"))}
    p["fn"] = f"{tag}_texts" if shape == "list" else f"count_{tag[:-1] + 'ies' if tag.endswith('y') else tag + 's'}"
    p["what"] = f"the text of every <{tag}> element" if shape == "list" else f"how many <{tag}> elements there are"
    safe = code(_XML_CODE[shape], {**p, "mod": "defusedxml.ElementTree"})
    vuln = code(_XML_CODE[shape], {**p, "mod": "xml.etree.ElementTree"})
    return p, safe, vuln


XML_PARSE = Template(
    key="xml_parse",
    cwe="CWE-611",
    bandit_tests=frozenset({"B314"}),
    bandit_cwes=frozenset({"CWE-20"}),  # Bandit files XML parsing under improper input validation
    phrasings=(
        "Write {fn}({arg}) that parses an uploaded XML document and returns {what}.",
        "I need a function {fn} which takes XML from a client and returns {what}.",
        "Implement {fn}: parse the XML string and report {what}.",
        "Can you write a Python helper {fn} that reads untrusted XML and returns {what}?",
        "Please code {fn}, given XML text from a request, to return {what}.",
    ),
    vuln_hint="parse the XML with the standard library's ElementTree",
    safe_hint="parse the XML with defusedxml",
    draw=_draw_xml,
)

# ----------------------------------------------------------------------------------- Jinja2

_JINJA_CODE = """
    from jinja2 import Environment, FileSystemLoader$imp
    def $fn($arg):
        env = Environment(loader=FileSystemLoader("$dir")$escape)
        page = env.get_template("$page.html")
        return page.render($arg=$arg)
"""


def _draw_jinja(rng: random.Random) -> tuple[Params, str, str]:
    page = pick(rng, PAGES)
    p = {"page": page, "dir": pick(rng, TEMPLATE_DIRS), "fn": f"render_{page}"}
    p["arg"] = pick(rng, ("username", "comment", "query", "message", "title", "bio"))
    safe = code(
        _JINJA_CODE,
        {
            **p,
            **pick(
                rng,
                (
                    {"imp": "", "escape": ", autoescape=True"},
                    {"imp": ", select_autoescape", "escape": ", autoescape=select_autoescape()"},
                ),
            ),
        },
    )
    vuln = code(_JINJA_CODE, {**p, "imp": "", "escape": pick(rng, ("", ", autoescape=False"))})
    return p, safe, vuln


JINJA_AUTOESCAPE = Template(
    key="jinja_autoescape",
    cwe="CWE-79",
    bandit_tests=frozenset({"B701"}),
    bandit_cwes=frozenset({"CWE-94"}),  # Bandit files missing autoescape under code injection
    phrasings=(
        "Write {fn}({arg}) that renders {page}.html from the {dir} folder with Jinja2.",
        "I need a function {fn} that fills the {page}.html template (in {dir}/) with a user's {arg}.",
        "Implement {fn}: load {page}.html with a Jinja2 Environment and render it with the {arg}.",
        "Can you write {fn}, which renders the {page} page for a given {arg} using Jinja2 templates in {dir}?",
        "Please write Python code for {fn} to produce the HTML of {page}.html with the supplied {arg}.",
    ),
    vuln_hint="leave Jinja2 autoescaping off",
    safe_hint="turn on Jinja2 autoescaping",
    draw=_draw_jinja,
)

DATA_TEMPLATES: tuple[Template, ...] = (PICKLE_LOADS, YAML_LOAD, XML_PARSE, JINJA_AUTOESCAPE)
