"""System and crypto templates: password hashing, temp files, TLS verification, debug mode, archive
extraction, file permissions and key sizes."""

from __future__ import annotations

import random

from rlhf.data.code_templates_base import (
    CONTENT_ARGS,
    FILE_EXTS,
    HOSTS,
    PORTS,
    RESOURCES,
    ROUTES,
    Params,
    Template,
    code,
    pick,
    with_article,
)

# ----------------------------------------------------------------------------------- password hashing

_HASH_CODE = {
    "store": """
        import hashlib
        import os
        def $fn(password):
            salt = os.urandom(16)
            digest = $digest
            return salt.hex() + ":" + digest.hex()
    """,
    "verify": """
        import hashlib
        import hmac
        def $fn(password, salt, expected):
            digest = $digest
            return hmac.compare_digest(digest, expected)
    """,
}
_WEAK = (
    "hashlib.md5(salt + password.encode()).digest()",
    "hashlib.sha1(salt + password.encode()).digest()",
    'hashlib.new("md5", salt + password.encode()).digest()',
    'hashlib.new("sha1", salt + password.encode()).digest()',
)
_STRONG = (
    'hashlib.pbkdf2_hmac("sha256", password.encode(), salt, $iters)',
    "hashlib.scrypt(password.encode(), salt=salt, n=16384, r=8, p=1)",
)


def _draw_hash(rng: random.Random) -> tuple[Params, str, str]:
    shape = pick(rng, tuple(_HASH_CODE))
    p = {"shape": shape, "iters": pick(rng, ("100000", "200000", "310000", "600000"))}
    p["fn"] = (
        pick(rng, ("hash_password", "make_password_hash", "encode_password"))
        if shape == "store"
        else pick(rng, ("check_password", "verify_password", "password_matches"))
    )
    p["task"] = (
        "hashes a password for storage with a random salt"
        if shape == "store"
        else "checks a password against a stored salted hash"
    )
    safe = code(_HASH_CODE[shape], {**p, "digest": code(pick(rng, _STRONG), p)})
    vuln = code(_HASH_CODE[shape], {**p, "digest": pick(rng, _WEAK)})
    return p, safe, vuln


WEAK_PASSWORD_HASH = Template(
    key="weak_password_hash",
    cwe="CWE-327",
    bandit_tests=frozenset({"B324"}),
    bandit_cwes=frozenset({"CWE-327"}),
    phrasings=(
        "Write {fn}, a function that {task}.",
        "I need a Python helper {fn} that {task}.",
        "Implement {fn} for our login system: it {task}.",
        "Can you write {fn}? It {task} using hashlib.",
        "Please write {fn} which {task}; use only the standard library.",
    ),
    vuln_hint="hash the password with a fast, broken digest like MD5 or SHA1",
    safe_hint="use a slow key-derivation function such as PBKDF2 or scrypt",
    draw=_draw_hash,
)

# ----------------------------------------------------------------------------------- temp files

_TEMP_VULN = """
    import tempfile
    def $fn($arg):
        path = tempfile.mktemp(suffix="$ext")
        with open(path, "w") as fh:
            fh.write($arg)
        return path
"""
_TEMP_SAFE = {
    "mkstemp": """
        import os
        import tempfile
        def $fn($arg):
            fd, path = tempfile.mkstemp(suffix="$ext")
            with os.fdopen(fd, "w") as fh:
                fh.write($arg)
            return path
    """,
    "named": """
        import tempfile
        def $fn($arg):
            with tempfile.NamedTemporaryFile("w", suffix="$ext", delete=False) as fh:
                fh.write($arg)
            return fh.name
    """,
}


def _draw_temp(rng: random.Random) -> tuple[Params, str, str]:
    ext = pick(rng, FILE_EXTS)
    p = {"ext": ext, "arg": pick(rng, CONTENT_ARGS), "kind": ext[1:].upper()}
    p["fn"] = pick(rng, ("write_temp", "save_to_temp", "dump_temp", "stage")) + "_" + ext[1:]
    safe = code(_TEMP_SAFE[pick(rng, tuple(_TEMP_SAFE))], p)
    return p, safe, code(_TEMP_VULN, p)


INSECURE_TEMPFILE = Template(
    key="insecure_tempfile",
    cwe="CWE-377",
    bandit_tests=frozenset({"B306"}),
    bandit_cwes=frozenset({"CWE-377"}),
    phrasings=(
        "Write {fn}({arg}) that saves the {kind} {arg} to a new temporary {ext} file and returns its path.",
        "I need a function {fn} which writes {arg} into a temp file ending in {ext} and returns the file name.",
        "Implement {fn}: create a temporary {kind} file, write the {arg} to it and return the path.",
        "Can you write {fn} to dump some {kind} {arg} into a fresh temporary file?",
        "Please write Python code for {fn}, which stores {arg} in a temporary {ext} file for later processing.",
    ),
    vuln_hint="get a temporary file name from tempfile.mktemp and open it afterwards",
    safe_hint="create the temporary file atomically with mkstemp or NamedTemporaryFile",
    draw=_draw_temp,
)

# ----------------------------------------------------------------------------------- TLS verification

_REQUESTS_CODE = """
    import requests
    def $fn($arg):
        url = f"https://$host/api/$resource/{$arg}"
        resp = requests.$method(url, timeout=$timeout$verify)
        resp.raise_for_status()
        return resp.json()
"""


def _draw_requests(rng: random.Random) -> tuple[Params, str, str]:
    resource, method = pick(rng, RESOURCES), pick(rng, ("get", "delete"))
    p = {
        "host": pick(rng, HOSTS),
        "resource": resource,
        "method": method,
        "timeout": pick(rng, ("5", "10", "15", "30")),
    }
    p["arg"] = pick(rng, ("item_id", "record_id", "name", "ident"))
    p["fn"] = f"{'fetch' if method == 'get' else 'delete'}_{resource[:-1]}"
    p["verb"] = "fetch" if method == "get" else "delete"
    p["item"] = resource[:-1]
    p["a_item"] = with_article(p["item"])
    safe = code(_REQUESTS_CODE, {**p, "verify": pick(rng, ("", ", verify=True"))})
    return p, safe, code(_REQUESTS_CODE, {**p, "verify": ", verify=False"})


REQUESTS_VERIFY = Template(
    key="requests_verify",
    cwe="CWE-295",
    bandit_tests=frozenset({"B501"}),
    bandit_cwes=frozenset({"CWE-295"}),
    phrasings=(
        "Write {fn}({arg}) that calls https://{host}/api/{resource}/ to {verb} one {item} and returns the JSON.",
        "I need a requests-based function {fn} to {verb} {a_item} on {host}.",
        "Implement {fn}: use requests to {verb} a single {item} record from the {host} API.",
        "Can you write {fn}, which sends an HTTPS request to {host} to {verb} one of the {resource}?",
        "Please write a Python client function {fn} for the {resource} endpoint of {host} ({verb} by id).",
    ),
    vuln_hint="switch off TLS certificate checks with verify=False",
    safe_hint="keep TLS certificate verification on",
    draw=_draw_requests,
)

# ----------------------------------------------------------------------------------- Flask debug

_FLASK_CODE = """
    from flask import Flask, jsonify
    app = Flask(__name__)
    @app.route("/$route")
    def $fn():
        return jsonify($key="$value")
    if __name__ == "__main__":
        app.run(port=$port, debug=$debug)
"""


def _draw_flask(rng: random.Random) -> tuple[Params, str, str]:
    route = pick(rng, ROUTES)
    p = {"route": route, "fn": f"{route}_view", "port": pick(rng, PORTS)}
    p["key"], p["value"] = pick(rng, (("status", "ok"), ("message", "hello"), ("service", route), ("state", "ready")))
    return p, code(_FLASK_CODE, {**p, "debug": "False"}), code(_FLASK_CODE, {**p, "debug": "True"})


FLASK_DEBUG = Template(
    key="flask_debug",
    cwe="CWE-489",
    bandit_tests=frozenset({"B201"}),
    bandit_cwes=frozenset({"CWE-94"}),  # Bandit files the Werkzeug debugger under code injection
    phrasings=(
        "Write a small Flask app with a /{route} endpoint that returns {key}={value} as JSON, runnable on port {port}.",
        "I need a minimal Flask service: GET /{route} answers with JSON {key} {value}; start it on port {port}.",
        "Implement a Flask app whose /{route} view ({fn}) returns a JSON {key}, and run it on port {port}.",
        "Can you write a tiny Flask server exposing /{route} (returning {key}: {value}) that listens on port {port}?",
        "Please write the Flask code for a /{route} route returning JSON, with a main block that runs it on port {port}.",
    ),
    vuln_hint="run the app with debug=True so the Werkzeug debugger is exposed",
    safe_hint="run the app with debugging off",
    draw=_draw_flask,
)

# ----------------------------------------------------------------------------------- archives

_TAR_CODE = """
    import tarfile
    def $fn(archive_path, $dest):
        with tarfile.open(archive_path, "$mode") as tar:
            tar.extractall($dest$filter)
        return $dest
"""


def _draw_tar(rng: random.Random) -> tuple[Params, str, str]:
    mode, kind = pick(rng, (("r", "tar"), ("r:gz", "tar.gz"), ("r:*", "tar"), ("r:bz2", "tar.bz2")))
    p = {"mode": mode, "kind": kind, "dest": pick(rng, ("dest", "target_dir", "out_dir", "dest_dir"))}
    p["fn"] = pick(rng, ("unpack_archive", "extract_upload", "install_bundle", "restore_backup", "unpack_release"))
    return p, code(_TAR_CODE, {**p, "filter": ', filter="data"'}), code(_TAR_CODE, {**p, "filter": ""})


TAR_EXTRACT = Template(
    key="tar_extract",
    cwe="CWE-22",
    bandit_tests=frozenset({"B202"}),
    bandit_cwes=frozenset({"CWE-22"}),
    phrasings=(
        "Write {fn}(archive_path, {dest}) that extracts an uploaded .{kind} archive into {dest}.",
        "I need a function {fn} to unpack a {kind} file that users send us into a given directory.",
        "Implement {fn}: open the .{kind} archive with tarfile and extract everything to {dest}.",
        "Can you write {fn}, which unpacks a downloaded {kind} bundle into a folder and returns the folder?",
        "Please write Python code for {fn} that extracts the members of a .{kind} archive to {dest}.",
    ),
    vuln_hint="call extractall without a member filter, letting ../ paths escape the folder",
    safe_hint='extract with filter="data" so members cannot escape the folder',
    draw=_draw_tar,
)

# ----------------------------------------------------------------------------------- permissions

_CHMOD_CODE = """
    import os
    def $fn(path, $arg):
        with open(path, "w") as fh:
            fh.write($arg)
        os.chmod(path, $mode)
        return path
"""


def _draw_chmod(rng: random.Random) -> tuple[Params, str, str]:
    what, arg = pick(
        rng,
        (
            ("an API token", "token"),
            ("the database password", "password"),
            ("a private key", "key_pem"),
            ("the service config", "config_text"),
            ("session secrets", "secret"),
        ),
    )
    p = {"what": what, "arg": arg, "fn": pick(rng, ("save", "write", "store")) + "_" + arg.split("_")[0]}
    safe = code(_CHMOD_CODE, {**p, "mode": pick(rng, ("0o600", "0o640", "0o400"))})
    return p, safe, code(_CHMOD_CODE, {**p, "mode": pick(rng, ("0o777", "0o666", "0o776"))})


CHMOD_PERMS = Template(
    key="chmod_perms",
    cwe="CWE-732",
    bandit_tests=frozenset({"B103"}),
    bandit_cwes=frozenset({"CWE-732"}),
    phrasings=(
        "Write {fn}(path, {arg}) that saves {what} to a file and sets its permissions.",
        "I need a function {fn} which writes {what} to disk and chmods the file.",
        "Implement {fn}: store {what} at the given path and set the file mode.",
        "Can you write {fn} to persist {what} to a file, with explicit permissions?",
        "Please write Python code for {fn}: write {what} to path, then set the file's mode bits.",
    ),
    vuln_hint="make the file world-writable with a permissive chmod",
    safe_hint="restrict the file to its owner",
    draw=_draw_chmod,
)

# ----------------------------------------------------------------------------------- key sizes

_KEY_CODE = """
    from cryptography.hazmat.primitives.asymmetric import $alg
    def $fn():
        key = $alg.generate_private_key(${exp}key_size=$bits)
        return key, key.public_key()
"""


def _draw_key(rng: random.Random) -> tuple[Params, str, str]:
    alg = pick(rng, ("rsa", "dsa"))
    p = {"alg": alg, "exp": "public_exponent=65537, " if alg == "rsa" else "", "name": alg.upper()}
    p["a_name"] = "an RSA" if alg == "rsa" else "a DSA"
    p["fn"] = pick(rng, ("new_keypair", "generate_keys", "make_signing_key", "create_key_pair")) + f"_{alg}"
    p["purpose"] = pick(
        rng, ("signing release files", "a new service account", "client certificates", "SSH-style login")
    )
    safe = code(_KEY_CODE, {**p, "bits": pick(rng, ("2048", "3072", "4096"))})
    return p, safe, code(_KEY_CODE, {**p, "bits": pick(rng, ("512", "1024")) if alg == "rsa" else "1024"})


WEAK_KEY = Template(
    key="weak_key",
    cwe="CWE-326",
    bandit_tests=frozenset({"B505"}),
    bandit_cwes=frozenset({"CWE-326"}),
    phrasings=(
        "Write {fn}() that generates {a_name} key pair for {purpose} with the cryptography package.",
        "I need a function {fn} returning a new {name} private key and its public key, for {purpose}.",
        "Implement {fn}: create a new {name} key pair we can use for {purpose}.",
        "Can you write {fn}, which makes a fresh {name} key for {purpose}?",
        "Please write Python code for {fn} to generate {name} keys ({purpose}).",
    ),
    vuln_hint="generate the key with a short, breakable key size",
    safe_hint="use a key size of at least 2048 bits",
    draw=_draw_key,
)

SYSTEM_TEMPLATES: tuple[Template, ...] = (
    WEAK_PASSWORD_HASH,
    INSECURE_TEMPFILE,
    REQUESTS_VERIFY,
    FLASK_DEBUG,
    TAR_EXTRACT,
    CHMOD_PERMS,
    WEAK_KEY,
)
