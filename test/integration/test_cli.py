#!/usr/bin/env python3
"""crmd's command line (app/main.c) and configuration checks (app/config.h): --version, --help, exit codes,
`check-config` in test and production, secrets kept out of every message, `serve` refusing a bad configuration,
and `routes`. Needs no database: nothing here gets as far as connecting.
"""
import base64
import os
import re
import secrets
import subprocess

from harness import CRMD, ROOT, check, run

STRONG_TOKEN = secrets.token_hex(32)
PASSWORD = "hunter2secret"
REMOTE_URL = "postgresql://crmd:%s@db.example.com/crmd?sslmode=disable" % PASSWORD


def base_env():
    """The caller's environment without any CRMD_* or PG* variable, which would change what crmd checks."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CRMD_") and not k.startswith("PG")}


def config_env(**extra):
    env = base_env()
    env.update(
        {
            "CRMD_ENV": "test",
            "CRMD_DATABASE_URL": "postgresql:///crmd?host=/nonexistent&user=crmd_app",
            "CRMD_MIGRATE_DATABASE_URL": "postgresql:///crmd?host=/nonexistent&user=postgres",
            "CRMD_OPERATOR_TOKEN": STRONG_TOKEN,
        }
    )
    env.update(extra)
    return env


def crmd(*args, env=None, timeout=30):
    r = subprocess.run([CRMD] + list(args), env=env if env is not None else base_env(), capture_output=True,
                       text=True, timeout=timeout)
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        check(marker not in r.stderr, "crmd %s: sanitizer report:\n%s" % (" ".join(args), r.stderr[-3000:]))
    return r


def problem_lines(text, var):
    return [line for line in text.splitlines() if line.startswith(var + ":")]


def config_var_names():
    """Every name in crm_config_vars, read from app/config.c: the table's own entries and the integer X-macro."""
    with open(os.path.join(ROOT, "app", "config.c"), encoding="utf-8") as f:
        src = f.read()
    table = src[src.index("const crm_config_var_t crm_config_vars[]"):]
    names = re.findall(r'\{"(CRMD_[A-Z0-9_]+)",', table[: table.index("};")])
    names += re.findall(r'X\("(CRMD_[A-Z0-9_]+)"', src)
    check(len(names) == len(set(names)), "duplicate names in crm_config_vars: %r" % names)
    check(len(names) >= 20, "found only %d variables in app/config.c: %r" % (len(names), names))
    return names


# ---- --version, --help, bad usage ----


def test_version():
    r = crmd("--version")
    check(r.returncode == 0, "--version exit %d" % r.returncode)
    check(re.fullmatch(r"crmd \d+\.\d+\.\d+\S*\n", r.stdout) is not None, "--version printed %r" % r.stdout)
    check(r.stderr == "", "--version wrote to stderr: %r" % r.stderr)
    check(crmd("version").stdout == r.stdout, "`crmd version` differs from --version")


def test_help():
    r = crmd("--help")
    check(r.returncode == 0, "--help exit %d" % r.returncode)
    check(r.stdout.startswith("usage: crmd"), "--help starts with %r" % r.stdout[:40])
    for command in ("serve", "migrate", "check-config", "routes"):
        check(re.search(r"^  %s\s" % command, r.stdout, re.M) is not None, "--help does not describe %s" % command)
    listed = re.findall(r"^  (CRMD_[A-Z0-9_]+)\s", r.stdout, re.M)
    names = config_var_names()
    check(listed == names, "--help lists %r,\nconfig.c has %r" % (listed, names))
    for name in ("CRMD_DB_QUEUE_MAX", "CRMD_LISTEN", "CRMD_OPERATOR_TOKEN", "CRMD_SHUTDOWN_GRACE_MS",
                 "CRMD_MAX_BODY_BYTES", "CRMD_HTTP_IDLE_TIMEOUT_MS"):
        line = [l for l in r.stdout.splitlines() if l.startswith("  %s " % name)]
        check(len(line) == 1 and "(default: " in line[0], "--help line for %s: %r" % (name, line))
    check("(0..1000000) (default: 1024)" in [l for l in r.stdout.splitlines() if "CRMD_DB_QUEUE_MAX" in l][0],
          "CRMD_DB_QUEUE_MAX's range and default")
    for alias in ("-h", "help"):
        check(crmd(alias).stdout == r.stdout, "`crmd %s` differs from --help" % alias)


def test_bad_usage():
    r = crmd("frobnicate")
    check(r.returncode == 2, "unknown command: exit %d" % r.returncode)
    check("frobnicate" in r.stderr and "usage: crmd" in r.stderr, "unknown command: stderr %r" % r.stderr[:300])
    check(r.stdout == "", "unknown command wrote to stdout: %r" % r.stdout[:200])
    r = crmd("serve", "extra")
    check(r.returncode == 2, "two arguments: exit %d" % r.returncode)
    check("usage: crmd" in r.stderr, "two arguments: stderr %r" % r.stderr[:300])


# ---- check-config ----


def test_check_config_clean():
    r = crmd("check-config", env=config_env())
    check(r.returncode == 0, "clean test env: exit %d\n%s" % (r.returncode, r.stderr))
    check(r.stdout == "configuration OK (test)\n", "clean test env: stdout %r" % r.stdout)
    check(r.stderr == "", "clean test env: problems %r" % r.stderr)


def check_production_refusal(token_env, token_why):
    env = base_env()
    env.update({"CRMD_ENV": "production", "CRMD_DATABASE_URL": REMOTE_URL})
    env.update(token_env)
    r = crmd("check-config", env=env)
    out = r.stdout + r.stderr
    check(r.returncode != 0, "production with %s: exit 0\n%s" % (token_why, out))
    check("configuration OK" not in r.stdout, "production with %s: %r" % (token_why, r.stdout))
    for var in ("CRMD_OPERATOR_TOKEN", "CRMD_DATABASE_URL", "CRMD_TLS_CERT"):
        check(len(problem_lines(r.stderr, var)) == 1, "production with %s: %s lines %r in\n%s"
              % (token_why, var, problem_lines(r.stderr, var), r.stderr))
    check("sslmode" in problem_lines(r.stderr, "CRMD_DATABASE_URL")[0], "the URL problem does not say why")
    check("db.example.com" in problem_lines(r.stderr, "CRMD_DATABASE_URL")[0], "the URL problem names no host")
    # Nothing secret in any message: not the password, not the URL, not the token.
    check(PASSWORD not in out, "the database password appears in:\n%s" % out)
    check("postgresql://" not in out, "a database URL appears in:\n%s" % out)
    if token_env:
        check(token_env["CRMD_OPERATOR_TOKEN"] not in out, "the operator token appears in:\n%s" % out)
    return r


def test_check_config_production():
    check_production_refusal({}, "no operator token")
    check_production_refusal({"CRMD_OPERATOR_TOKEN": "changeme-changeme-changeme-changeme"}, "a weak token")
    # With everything that production asks for, it passes.
    env = base_env()
    env.update(
        {
            "CRMD_ENV": "production",
            "CRMD_DATABASE_URL": "postgresql://crmd_app:%s@db.example.com/crmd?sslmode=verify-full" % PASSWORD,
            "CRMD_MIGRATE": "0",
            "CRMD_OPERATOR_TOKEN": STRONG_TOKEN,
            "CRMD_BEHIND_PROXY": "1",
            "CRMD_SMTP_URL": "smtps://smtp.example.com",
            "CRMD_MAIL_FROM": "Example <no-reply@example.com>",
            "CRMD_JWT_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "CRMD_PUBLIC_URL": "https://crm.example.com",
        }
    )
    r = crmd("check-config", env=env)
    check(r.returncode == 0, "complete production config: exit %d\n%s" % (r.returncode, r.stderr))
    check(r.stdout == "configuration OK (production)\n", "complete production config: %r" % r.stdout)
    check(PASSWORD not in r.stdout + r.stderr, "the password appears in %r" % (r.stdout + r.stderr))


def test_check_config_secrets_in_broken_urls():
    """A URL that fails to parse or carries a bad port is reported without quoting it."""
    env = config_env(
        CRMD_DATABASE_URL="postgresql://crmd:%s@db.example.com:99999/crmd" % PASSWORD,
        CRMD_MIGRATE_DATABASE_URL="postgresql://crmd:%s@db.example.com/crmd?%s=1" % (PASSWORD, PASSWORD),
    )
    r = crmd("check-config", env=env)
    out = r.stdout + r.stderr
    check(r.returncode != 0, "broken URLs: exit 0")
    check(len(problem_lines(r.stderr, "CRMD_DATABASE_URL")) == 1, "bad port not reported:\n%s" % r.stderr)
    check(len(problem_lines(r.stderr, "CRMD_MIGRATE_DATABASE_URL")) == 1, "bad URI not reported:\n%s" % r.stderr)
    check(PASSWORD not in out, "the password appears in:\n%s" % out)
    env = config_env(CRMD_DATABASE_URL="host=db.example.com password=%s port=x" % PASSWORD)
    r = crmd("check-config", env=env)
    check(r.returncode != 0 and len(problem_lines(r.stderr, "CRMD_DATABASE_URL")) == 1, "bad key=value port:\n%s"
          % r.stderr)
    check(PASSWORD not in r.stdout + r.stderr, "the password appears in:\n%s" % r.stderr)


def test_check_config_bad_values():
    r = crmd("check-config", env=config_env(CRMD_DB_POOL_SIZE="0"))
    check(r.returncode != 0, "CRMD_DB_POOL_SIZE=0: exit 0")
    lines = problem_lines(r.stderr, "CRMD_DB_POOL_SIZE")
    check(len(lines) == 1 and "1" in lines[0] and "256" in lines[0], "CRMD_DB_POOL_SIZE=0: %r" % r.stderr)
    # Every problem is reported in one run, one line each.
    bad = {
        "CRMD_DB_POOL_SIZE": "257",
        "CRMD_REQUEST_TIMEOUT_MS": "abc",
        "CRMD_MAX_BODY_BYTES": "67108865",
        "CRMD_HTTP_IDLE_TIMEOUT_MS": "999",
        "CRMD_DB_QUEUE_MAX": "-1",
        "CRMD_LOG_LEVEL": "loud",
        "CRMD_ENV": "staging",
        "CRMD_LISTEN": "127.0.0.1:99999",
        "CRMD_TLS_CERT": "/nonexistent/cert.pem",
    }
    r = crmd("check-config", env=config_env(**bad))
    check(r.returncode != 0, "bad values: exit 0")
    for var in bad:
        check(len(problem_lines(r.stderr, var)) == 1, "%s=%s: lines %r in\n%s"
              % (var, bad[var], problem_lines(r.stderr, var), r.stderr))
    # CRMD_TLS_KEY must come with CRMD_TLS_CERT.
    check(len(problem_lines(r.stderr, "CRMD_TLS_KEY")) == 1, "CRMD_TLS_KEY not required:\n%s" % r.stderr)


def test_check_config_unknown_variable():
    """A misspelt variable is a warning with a suggestion, and its value is never printed."""
    r = crmd("check-config", env=config_env(CRMD_DB_POOL_SIZ=PASSWORD))
    check(r.returncode == 0, "a warning failed check-config: %d\n%s" % (r.returncode, r.stderr))
    check("CRMD_DB_POOL_SIZ " in r.stderr and "CRMD_DB_POOL_SIZE" in r.stderr, "no suggestion in %r" % r.stderr)
    check(PASSWORD not in r.stdout + r.stderr, "the unknown variable's value appears in %r" % r.stderr)


# ---- serve with a bad configuration ----


def test_serve_refuses_bad_config():
    r = crmd("serve", env=config_env(CRMD_DB_POOL_SIZE="0", CRMD_LISTEN="127.0.0.1:0"), timeout=30)
    check(r.returncode != 0, "serve with a config error exited 0")
    check("listening" not in r.stdout, "serve with a config error listened: %r" % r.stdout)
    check(len(problem_lines(r.stderr, "CRMD_DB_POOL_SIZE")) == 1, "serve does not name the problem: %r" % r.stderr)
    # serve is the default command.
    r = crmd(env=config_env(CRMD_DB_POOL_SIZE="0", CRMD_LISTEN="127.0.0.1:0"), timeout=30)
    check(r.returncode != 0 and "listening" not in r.stdout, "crmd (default serve) with a config error: %d %r"
          % (r.returncode, r.stdout))
    # Production refusals stop serve just as they fail check-config, before the database is touched.
    env = base_env()
    env.update({"CRMD_ENV": "production", "CRMD_DATABASE_URL": REMOTE_URL, "CRMD_LISTEN": "127.0.0.1:0"})
    r = crmd("serve", env=env, timeout=30)
    check(r.returncode != 0 and "listening" not in r.stdout, "production serve: %d %r" % (r.returncode, r.stdout))
    check(PASSWORD not in r.stdout + r.stderr, "the password appears in serve's output")


# ---- routes ----


def test_routes():
    r = crmd("routes")
    check(r.returncode == 0, "routes: exit %d %s" % (r.returncode, r.stderr))
    lines = r.stdout.splitlines()
    pattern = re.compile(r"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (/\S*)( test-only)?$")
    for line in lines:
        check(pattern.match(line) is not None, "routes: malformed line %r" % line)
    check(len(lines) == len(set(lines)), "routes: duplicates in %r" % lines)
    for expected in ("GET /health/live", "GET /health/ready", "GET /health/database", "GET /metrics",
                     "GET /openapi.yaml", "GET /v1/_diag/echo test-only", "GET /v1/_diag/sleep test-only",
                     "POST /v1/_diag/audit test-only", "GET /v1/_diag/audit test-only"):
        check(expected in lines, "routes lacks %r:\n%s" % (expected, r.stdout))
    # The diagnostics and nothing else are test-only.
    for line in lines:
        path = line.split(" ")[1]
        check(line.endswith(" test-only") == path.startswith("/v1/_diag/"), "routes: %r" % line)
    # The same list in every environment: it describes the binary, not the configuration.
    check(crmd("routes", env=config_env(CRMD_ENV="production")).stdout == r.stdout, "routes depends on CRMD_ENV")


run(
    [
        test_version,
        test_help,
        test_bad_usage,
        test_check_config_clean,
        test_check_config_production,
        test_check_config_secrets_in_broken_urls,
        test_check_config_bad_values,
        test_check_config_unknown_variable,
        test_serve_refuses_bad_config,
        test_routes,
    ]
)
