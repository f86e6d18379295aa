"""Injection templates: SQL (CWE-89), OS command (CWE-78) and eval of input (CWE-95)."""

from __future__ import annotations

import random

from rlhf.data.code_templates_base import ENTITIES, FETCH_VERBS, Params, Template, code, pick, with_article

# ----------------------------------------------------------------------------------- SQL

_SQL_SELECT_SAFE = {
    "conn": """
        def $fn(conn, $arg):
            cur = conn.cursor()
            cur.execute($query)
            return cur.fetchone()
    """,
    "path": """
        import sqlite3
        def $fn(db_path, $arg):
            conn = sqlite3.connect(db_path)
            try:
                return conn.execute($query).fetchone()
            finally:
                conn.close()
    """,
}


def _sql_vulnerable(sql: str, args: tuple[str, ...], style: str) -> str:
    """``sql`` has one ``?`` slot per argument; fill each with a quoted value the injectable way."""
    parts = sql.split("?")
    if style == "fstring":
        return 'f"' + parts[0] + "".join("'{" + a + "}'" + p for a, p in zip(args, parts[1:], strict=True)) + '"'
    if style == "format":
        return '"' + "'{}'".join(parts) + '".format(' + ", ".join(args) + ")"
    if style == "percent":
        rhs = args[0] if len(args) == 1 else "(" + ", ".join(args) + ")"
        return '"' + "'%s'".join(parts) + '" % ' + rhs
    # concat
    return '"' + parts[0] + "".join("'\" + " + a + " + \"'" + p for a, p in zip(args, parts[1:], strict=True)) + '"'


def _sql_safe(sql: str, args: tuple[str, ...]) -> str:
    return '"' + sql + '", (' + ", ".join(args) + ("," if len(args) == 1 else "") + ")"


SQL_STYLES = ("fstring", "format", "percent", "concat")


def _draw_sql_select(rng: random.Random) -> tuple[Params, str, str]:
    entity, table, column, arg, field, _ = pick(rng, ENTITIES)
    cols = pick(rng, ("*", f"id, {column}, {field}", f"{column}, {field}"))
    shape, style = pick(rng, tuple(_SQL_SELECT_SAFE)), pick(rng, SQL_STYLES)
    p = {"entity": entity, "a_entity": with_article(entity), "table": table, "column": column, "arg": arg}
    p |= {"shape": shape, "style": style}
    p["fn"] = f"{pick(rng, FETCH_VERBS)}_{entity}_by_{column}"
    sql = f"SELECT {cols} FROM {table} WHERE {column} = ?"
    safe = code(_SQL_SELECT_SAFE[shape], {**p, "query": _sql_safe(sql, (arg,))})
    vuln = code(_SQL_SELECT_SAFE[shape], {**p, "query": _sql_vulnerable(sql, (arg,), style)})
    return p, safe, vuln


SQL_SELECT = Template(
    key="sql_select",
    cwe="CWE-89",
    bandit_tests=frozenset({"B608"}),
    bandit_cwes=frozenset({"CWE-89"}),
    phrasings=(
        "Write a Python function {fn} that returns the {entity} from the {table} table whose {column} matches the given {arg}.",
        "Using sqlite3, implement {fn} to look up {a_entity} in the {table} table by {column}.",
        "I need a helper called {fn} that fetches one {entity} row from {table} where {column} equals a value passed in.",
        "Can you write {fn}? It should query the {table} table for the {entity} with a given {column}.",
        "Show me a function {fn} that finds {a_entity} by {column} in a SQLite database (table {table}).",
        "Write {fn}, which selects the {entity} matching a given {column} from the {table} table and returns the row.",
    ),
    vuln_hint="build the SQL query by pasting the input into the string",
    safe_hint="use a parameterised query",
    draw=_draw_sql_select,
)

_SQL_MODIFY_CODE = """
    import sqlite3
    def $fn(db_path, $args):
        conn = sqlite3.connect(db_path)
        with conn:
            conn.execute($query)
        conn.close()
"""


def _draw_sql_modify(rng: random.Random) -> tuple[Params, str, str]:
    entity, table, column, arg, field, value = pick(rng, ENTITIES)
    action, style = pick(rng, ("delete", "update", "insert")), pick(rng, SQL_STYLES)
    if action == "delete":
        fn, sql, args = f"delete_{entity}", f"DELETE FROM {table} WHERE {column} = ?", (arg,)
        desc = f"deletes the {entity} with a given {column}"
    elif action == "update":
        fn, sql, args = f"set_{entity}_{field}", f"UPDATE {table} SET {field} = ? WHERE {column} = ?", (value, arg)
        desc = f"updates the {field} of the {entity} identified by {column}"
    else:
        fn, sql, args = f"add_{entity}", f"INSERT INTO {table} ({column}, {field}) VALUES (?, ?)", (arg, value)
        desc = f"inserts a new {entity} given its {column} and {field}"
    p = {"entity": entity, "table": table, "fn": fn, "desc": desc, "action": action, "style": style}
    p["args"] = arg if action == "delete" else f"{arg}, {value}"
    safe = code(_SQL_MODIFY_CODE, {**p, "query": _sql_safe(sql, args)})
    vuln = code(_SQL_MODIFY_CODE, {**p, "query": _sql_vulnerable(sql, args, style)})
    return p, safe, vuln


SQL_MODIFY = Template(
    key="sql_modify",
    cwe="CWE-89",
    bandit_tests=frozenset({"B608"}),
    bandit_cwes=frozenset({"CWE-89"}),
    phrasings=(
        "Write a sqlite3 function {fn} that {desc} in the {table} table.",
        "Implement {fn}: it {desc}, using the {table} table of a SQLite file.",
        "I need {fn} for my app. It {desc} (table {table}).",
        "Please write a Python function named {fn} that {desc} in {table}.",
        "Could you code {fn}? Given a database path, it {desc} in the {table} table and commits.",
    ),
    vuln_hint="format the input straight into the SQL statement",
    safe_hint="pass the values as query parameters",
    draw=_draw_sql_modify,
)

# ----------------------------------------------------------------------------------- OS commands

# (shell command, argv list, what it does, function name, argument name)
_SYSTEM_CMDS = (
    ("gzip -k", '"gzip", "-k"', "compresses a file", "compress_file", "path"),
    ("ping -c 1", '"ping", "-c", "1"', "pings a host once", "ping_host", "host"),
    ("rm -rf", '"rm", "-rf"', "deletes a directory tree", "remove_tree", "directory"),
    ("git clone", '"git", "clone"', "clones a git repository", "clone_repo", "repo_url"),
    ("mkdir -p", '"mkdir", "-p"', "creates a directory", "make_dir", "dirname"),
    ("touch", '"touch"', "creates an empty file", "touch_file", "filename"),
    ("lpr", '"lpr"', "sends a document to the printer", "print_document", "document"),
)

_OS_SYSTEM_VULN = {
    "fstring": """
        import os
        def $fn($arg):
            status = os.system(f"$cmd {$arg}")
            return status == 0
    """,
    "concat": """
        import os
        def $fn($arg):
            status = os.system("$cmd " + $arg)
            return status == 0
    """,
}
_OS_SYSTEM_SAFE = """
    import subprocess
    def $fn($arg):
        result = subprocess.run([$argv, $arg])
        return result.returncode == 0
"""


def _draw_os_system(rng: random.Random) -> tuple[Params, str, str]:
    cmd, argv, desc, fn, arg = pick(rng, _SYSTEM_CMDS)
    style = pick(rng, tuple(_OS_SYSTEM_VULN))
    p = {"cmd": cmd, "argv": argv, "desc": desc, "fn": fn, "arg": arg, "tool": cmd.split()[0], "style": style}
    return p, code(_OS_SYSTEM_SAFE, p), code(_OS_SYSTEM_VULN[style], p)


OS_SYSTEM = Template(
    key="os_system",
    cwe="CWE-78",
    bandit_tests=frozenset({"B605"}),
    bandit_cwes=frozenset({"CWE-78"}),
    phrasings=(
        "Write a function {fn}({arg}) that {desc} using the {tool} command.",
        "I need a Python helper {fn} that {desc}; just call {tool}.",
        "Implement {fn}: it takes a {arg} and {desc} by running {tool}. Return True on success.",
        "Can you write {fn}, which {desc} with {tool} and reports whether it worked?",
        "Show me how to write {fn} that {desc} by shelling out to {tool}.",
    ),
    vuln_hint="hand the input to os.system inside the command string",
    safe_hint="run the command as an argument list without a shell",
    draw=_draw_os_system,
)

# (shell command, argv list, what it returns, function name, argument name)
_OUTPUT_CMDS = (
    ("grep -c ERROR", '"grep", "-c", "ERROR"', "the number of error lines in a log file", "count_errors", "log_path"),
    ("file --mime-type -b", '"file", "--mime-type", "-b"', "the MIME type of a file", "mime_type", "path"),
    ("whois", '"whois"', "the whois record of a domain", "whois_record", "domain"),
    ("dig +short", '"dig", "+short"', "the IP addresses of a hostname", "resolve_host", "hostname"),
    ("tail -n 20", '"tail", "-n", "20"', "the last lines of a log file", "tail_log", "log_path"),
    ("wc -l", '"wc", "-l"', "the line count of a file", "count_lines", "filename"),
    (
        "git log -1 --oneline",
        '"git", "log", "-1", "--oneline"',
        "the latest commit on a branch",
        "last_commit",
        "branch",
    ),
)

_SUBPROCESS_CODE = {
    "check_output": """
        import subprocess
        def $fn($arg):
            out = subprocess.check_output($cmdline, text=True)
            return out.strip()
    """,
    "run": """
        import subprocess
        def $fn($arg):
            proc = subprocess.run($cmdline, capture_output=True, text=True)
            return proc.stdout.strip()
    """,
}


def _draw_subprocess_shell(rng: random.Random) -> tuple[Params, str, str]:
    cmd, argv, what, fn, arg = pick(rng, _OUTPUT_CMDS)
    shape = pick(rng, tuple(_SUBPROCESS_CODE))
    p = {"cmd": cmd, "what": what, "fn": fn, "arg": arg, "tool": cmd.split()[0], "shape": shape}
    shell_cmd = pick(rng, (f'f"{cmd} {{{arg}}}"', f'"{cmd} " + {arg}'))
    safe = code(_SUBPROCESS_CODE[shape], {**p, "cmdline": f"[{argv}, {arg}]"})
    vuln = code(_SUBPROCESS_CODE[shape], {**p, "cmdline": f"{shell_cmd}, shell=True"})
    return p, safe, vuln


SUBPROCESS_SHELL = Template(
    key="subprocess_shell",
    cwe="CWE-78",
    bandit_tests=frozenset({"B602"}),
    bandit_cwes=frozenset({"CWE-78"}),
    phrasings=(
        "Write {fn}({arg}) that returns {what}, using {tool} through subprocess.",
        "I want a Python function {fn} which runs {tool} and gives back {what}.",
        "Implement {fn}: use the {tool} tool to get {what} and return its output as a string.",
        "Can you write a helper named {fn} that returns {what}? Calling {tool} is fine.",
        "Please code {fn}, taking a {arg} and returning {what} via {tool}.",
    ),
    vuln_hint="run the command string with shell=True",
    safe_hint="pass an argument list to subprocess without a shell",
    draw=_draw_subprocess_shell,
)

# ----------------------------------------------------------------------------------- eval

_EVAL_CODE = {
    "arg": """
        $imp
        def $fn($arg):
            value = $call($arg)
            if not isinstance(value, $type):
                raise ValueError("expected a $type")
            return value
    """,
    "input": """
        $imp
        def $fn():
            raw = input("$prompt: ")
            value = $call(raw)
            return value if isinstance(value, $type) else None
    """,
}
_EVAL_TYPES = ("list", "dict", "tuple", "int", "float")
_EVAL_SUBJECTS = (
    ("settings", "parse_settings"),
    ("filter", "read_filter"),
    ("coordinates", "parse_coordinates"),
    ("weights", "load_weights"),
    ("options", "parse_options"),
    ("limits", "read_limits"),
)


def _draw_eval(rng: random.Random) -> tuple[Params, str, str]:
    subject, fn = pick(rng, _EVAL_SUBJECTS)
    shape = pick(rng, tuple(_EVAL_CODE))
    p = {"subject": subject, "fn": fn, "type": pick(rng, _EVAL_TYPES), "shape": shape}
    p["a_type"] = with_article(p["type"])
    p["arg"] = pick(rng, ("text", "raw", "value", "line", "spec"))
    p["prompt"] = f"Enter the {subject}"
    p["source"] = "what the user types at a prompt" if shape == "input" else "a string argument"
    safe = code(_EVAL_CODE[shape], {**p, "imp": "import ast", "call": "ast.literal_eval"})
    vuln = code(_EVAL_CODE[shape], {**p, "imp": "", "call": "eval"})
    return p, safe, vuln


EVAL_EXPR = Template(
    key="eval_expr",
    cwe="CWE-95",
    bandit_tests=frozenset({"B307"}),
    bandit_cwes=frozenset({"CWE-78"}),  # Bandit files eval() under OS command injection
    phrasings=(
        "Write {fn}, which parses the {subject} from {source} into a Python {type}.",
        "I need a function {fn} that reads the {subject} from {source} and returns it as {a_type}.",
        "Implement {fn}: take the {subject} from {source} and turn it into {a_type}.",
        "Can you write {fn} that converts the {subject}, given as {source}, into {a_type} value?",
        "Please write a Python helper {fn} to parse the {subject}, which arrives as {source}, into {a_type}.",
    ),
    vuln_hint="evaluate the text with eval",
    safe_hint="parse the text with ast.literal_eval",
    draw=_draw_eval,
)

INJECT_TEMPLATES: tuple[Template, ...] = (SQL_SELECT, SQL_MODIFY, OS_SYSTEM, SUBPROCESS_SHELL, EVAL_EXPR)
