#!/usr/bin/env python3
"""protocols/openapi.yaml is the API contract (DESIGN.md §5) and must stay true: every public route crmd
registers (`crmd routes`) is described with its method, every described operation is a public route, every
operation documents its responses, and every $ref points inside the document. Needs no database.
"""
import os
import re
import subprocess

import yaml

from harness import CRMD, ROOT, check, fail, run

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SPEC_PATH = os.path.join(ROOT, "protocols", "openapi.yaml")

_spec = None


def spec():
    global _spec
    if _spec is None:
        with open(SPEC_PATH, encoding="utf-8") as f:
            _spec = yaml.safe_load(f)
        check(isinstance(_spec, dict), "openapi.yaml is not a mapping")
    return _spec


def routes():
    """(method, pattern, test_only) for every route `crmd routes` prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMD_")}
    r = subprocess.run([CRMD, "routes"], capture_output=True, text=True, env=env, timeout=60)
    check(r.returncode == 0, "crmd routes: exit %d: %s" % (r.returncode, r.stderr))
    out = []
    for line in r.stdout.splitlines():
        m = re.fullmatch(r"([A-Z]+) (/\S*)( test-only)?", line)
        check(m is not None, "crmd routes: malformed line %r" % line)
        out.append((m.group(1).lower(), m.group(2), m.group(3) is not None))
    check(len(out) > 0, "crmd routes printed nothing")
    return out


def operations():
    """(method, path, operation) for every operation in the document."""
    paths = spec().get("paths")
    check(isinstance(paths, dict) and paths, "openapi.yaml has no paths")
    out = []
    for path, item in paths.items():
        check(isinstance(item, dict), "paths[%r] is not a mapping" % path)
        for key, op in item.items():
            if key in HTTP_METHODS:
                out.append((key, path, op))
            else:
                check(key in ("summary", "description", "parameters", "servers", "$ref"),
                      "paths[%r] has an unknown key %r" % (path, key))
    return out


def test_document_basics():
    doc = spec()
    check(str(doc.get("openapi", "")).startswith("3.1."), "openapi version %r" % doc.get("openapi"))
    check(isinstance(doc.get("info"), dict) and doc["info"].get("title") and doc["info"].get("version"), "info")


def test_every_public_route_is_described():
    described = {(m, p) for m, p, _ in operations()}
    missing = [(m.upper(), p) for m, p, test_only in routes() if not test_only and (m, p) not in described]
    check(not missing, "routes missing from protocols/openapi.yaml: %r" % missing)


def test_every_operation_is_a_public_route():
    registered = routes()
    public = {(m, p) for m, p, test_only in registered if not test_only}
    test_only = {(m, p) for m, p, t in registered if t}
    paths = {p for _, p in public}
    for method, path, _ in operations():
        if (method, path) in public:
            continue
        # The HTTP layer itself answers HEAD for every GET route and OPTIONS for every path (lib/http.h).
        if method == "head" and ("get", path) in public:
            continue
        if method == "options" and path in paths:
            continue
        if (method, path) in test_only:
            fail("%s %s is a test-only diagnostic, absent in production, yet in the contract" % (method.upper(), path))
        fail("%s %s is in protocols/openapi.yaml but crmd does not register it" % (method.upper(), path))


def test_every_operation_has_responses():
    ids = []
    for method, path, op in operations():
        where = "%s %s" % (method.upper(), path)
        check(isinstance(op, dict), "%s is not a mapping" % where)
        responses = op.get("responses")
        check(isinstance(responses, dict) and responses, "%s has no responses" % where)
        for code, resp in responses.items():
            check(re.fullmatch(r"[1-5](\d\d|XX)|default", str(code)) is not None, "%s: response key %r"
                  % (where, code))
            check(isinstance(resp, dict) and ("$ref" in resp or "description" in resp),
                  "%s: response %s has no description" % (where, code))
        check(any(str(code).startswith("2") for code in responses), "%s documents no success response" % where)
        if "operationId" in op:
            ids.append(op["operationId"])
        # Every {param} of the path template is declared as a required path parameter.
        declared = {}
        for p in (spec()["paths"][path].get("parameters") or []) + (op.get("parameters") or []):
            p = resolve(p["$ref"], where) if "$ref" in p else p
            if p.get("in") == "path":
                declared[p.get("name")] = p.get("required") is True
        for name in re.findall(r"\{([^}]+)\}", path):
            check(declared.get(name) is True, "%s: path parameter %r is not declared as required" % (where, name))
    check(len(ids) == len(set(ids)), "duplicate operationIds: %r" % sorted(i for i in ids if ids.count(i) > 1))


def resolve(ref, where):
    """The node a local JSON pointer ("#/a/b") designates; fails for anything else."""
    check(isinstance(ref, str) and ref.startswith("#/"), "%s: $ref %r does not point inside the document"
          % (where, ref))
    node = spec()
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            fail("%s: $ref %r does not resolve (no %r)" % (where, ref, key))
    return node


def test_every_ref_resolves():
    count = 0

    def walk(node, where):
        nonlocal count
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    resolve(v, where)
                    count += 1
                else:
                    walk(v, "%s/%s" % (where, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, "%s/%d" % (where, i))

    walk(spec(), "#")
    check(count > 0, "no $ref found at all: is the walk broken?")


def test_checks_can_fail():
    """The resolver and the route comparison reject what they should (guards against a vacuous pass)."""
    for bad in ("#/components/schemas/NoSuchSchema", "other.yaml#/x", "#/paths/~1nope"):
        try:
            resolve(bad, "self-test")
        except AssertionError:
            continue
        fail("resolve accepted %r" % bad)
    check(resolve("#/paths/~1health~1live/get", "self-test") is spec()["paths"]["/health/live"]["get"],
          "resolve does not unescape ~1")


run(
    [
        test_document_basics,
        test_every_public_route_is_described,
        test_every_operation_is_a_public_route,
        test_every_operation_has_responses,
        test_every_ref_resolves,
        test_checks_can_fail,
    ]
)
