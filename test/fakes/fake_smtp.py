#!/usr/bin/env python3
"""Fake ESMTP server (a sink, RFC 5321) for crmd's tests (DESIGN.md §7).

It accepts mail the way a submission server does (EHLO, STARTTLS or implicit TLS, AUTH PLAIN/LOGIN, MAIL, RCPT,
DATA with dot-unstuffing), stores every accepted message for the tests to inspect, and injects faults on command
through a JSON control API on a separate port: refused connections, 451/554 after DATA, a dropped connection
after DATA, slow replies. See README.md in this directory for the control API.

The control port speaks the same hand-written HTTP as fake_upstream.py, which this file imports from its own
directory. Only the Python standard library is used.
"""
import asyncio
import base64
import binascii
import json
import os
import re
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_upstream as web  # noqa: E402

MAX_COMMAND_LINE = 2048  # RFC 5321 §4.5.3.1.4 allows 512; extensions make real clients send a little more.
MAX_LINE = 1 << 20  # the stream limit: a longer line (command or message text) ends the session
MAX_RECIPIENTS = 1000
MAX_MESSAGES = 10_000
FAULT_MODES = ("down", "tempfail", "permfail", "drop_after_data", "slow", "ok")
MAIL_RE = re.compile(r"FROM:\s*<([^<>]*)>(.*)", re.IGNORECASE | re.DOTALL)
RCPT_RE = re.compile(r"TO:\s*<([^<>]+)>(.*)", re.IGNORECASE | re.DOTALL)


class Dropped(Exception):
    """The session ends at once without a reply (fault drop_after_data, or the peer misbehaved)."""


class Session:
    def __init__(self, tls):
        self.tls = tls
        self.helo = None
        self.esmtp = False
        self.auth_user = None
        self.reset()

    def reset(self):
        self.mail_from = None
        self.rcpt_to = []


class SmtpFake:
    def __init__(self, args):
        self.host, self.port = args.listen
        self.hostname = args.hostname
        self.max_size = args.max_size
        self.auth = tuple(args.auth.split(":", 1)) if args.auth else None
        self.implicit_tls = args.implicit_tls
        self.ctx = web.server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        self.server = None
        self.writers = set()
        self.messages = []
        self.mode = "ok"
        self.remaining = None  # None: unlimited
        self.delay_ms = 0
        self.stats = {"connections_accepted": 0, "open_connections": 0, "messages_accepted": 0,
                      "messages_tempfailed": 0, "messages_permfailed": 0, "messages_dropped": 0,
                      "auth_successes": 0, "auth_failures": 0, "starttls_upgrades": 0, "commands": 0}

    # listening socket

    async def listen(self):
        self.server = await asyncio.start_server(self.session, self.host, self.port, limit=MAX_LINE,
                                                 ssl=self.ctx if self.implicit_tls else None, backlog=256)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop_listening(self):
        # Closing the listening socket (rather than accepting and closing) makes clients see what a stopped
        # server gives them: ECONNREFUSED at connect time. Sessions already open carry on.
        if self.server is not None:
            self.server.close()
            self.server = None

    # faults

    def take_fault(self, modes):
        """The current fault mode if it is one of `modes`, consuming one of its `times`; otherwise None."""
        if self.mode not in modes:
            return None
        mode = self.mode
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.mode, self.remaining, self.delay_ms = "ok", None, 0
        return mode

    # SMTP

    async def reply(self, writer, code, *lines):
        """Send a (multi-line) reply `code` with `lines` (each may carry an enhanced status code)."""
        lines = lines or ("",)
        delay = self.delay_ms
        if self.take_fault(("slow",)):
            await asyncio.sleep(delay / 1000)
        text = "".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n" for i, line in enumerate(lines))
        writer.write(text.encode())
        await writer.drain()

    async def read_line(self, reader, limit):
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise Dropped() from None
        except asyncio.LimitOverrunError:
            raise Dropped() from None
        if len(line) > limit:
            raise Dropped()
        return line

    async def session(self, reader, writer):
        self.stats["connections_accepted"] += 1
        self.stats["open_connections"] += 1
        self.writers.add(writer)
        s = Session(tls=self.implicit_tls)
        try:
            await self.reply(writer, 220, f"{self.hostname} ESMTP fake_smtp ready")
            while True:
                line = await self.read_line(reader, MAX_COMMAND_LINE)
                if not line.endswith(b"\r\n"):
                    await self.reply(writer, 500, "5.5.2 Command lines end with CRLF")
                    continue
                self.stats["commands"] += 1
                text = line[:-2].decode("utf-8", "replace")
                verb, _, arg = text.partition(" ")
                verb = verb.upper()
                handler = getattr(self, "cmd_" + verb, None) if verb.isalpha() else None
                if handler is None:
                    await self.reply(writer, 500, "5.5.2 Command unrecognized")
                    continue
                if await handler(s, arg.strip(), reader, writer) is False:
                    break
        except (Dropped, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self.stats["open_connections"] -= 1
            self.writers.discard(writer)
            writer.close()

    def capabilities(self, s):
        caps = [f"SIZE {self.max_size}", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"]
        if self.auth:
            caps.append("AUTH PLAIN LOGIN")
        if self.ctx is not None and not s.tls:
            caps.append("STARTTLS")
        return caps

    async def cmd_EHLO(self, s, arg, reader, writer):
        if not arg:
            return await self.reply(writer, 501, "5.5.4 EHLO needs a domain")
        s.helo, s.esmtp = arg, True
        s.reset()
        await self.reply(writer, 250, f"{self.hostname} greets {arg}", *self.capabilities(s))

    async def cmd_HELO(self, s, arg, reader, writer):
        if not arg:
            return await self.reply(writer, 501, "5.5.4 HELO needs a domain")
        s.helo, s.esmtp = arg, False
        s.reset()
        await self.reply(writer, 250, self.hostname)

    async def cmd_STARTTLS(self, s, arg, reader, writer):
        if self.ctx is None:
            return await self.reply(writer, 502, "5.5.1 STARTTLS not available")
        if s.tls:
            return await self.reply(writer, 503, "5.5.1 TLS already active")
        if arg:
            return await self.reply(writer, 501, "5.5.4 STARTTLS takes no arguments")
        await self.reply(writer, 220, "2.0.0 Ready to start TLS")
        # RFC 3207 §4.2 (and CVE-2011-0411): plaintext pipelined behind STARTTLS must not be treated as if it
        # had arrived over TLS. StreamReader has no public way to inspect its buffer, hence the private field.
        if reader._buffer:
            raise Dropped()
        try:
            await writer.start_tls(self.ctx, ssl_handshake_timeout=10)
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError):
            raise Dropped() from None
        self.stats["starttls_upgrades"] += 1
        # RFC 3207 §4.2: the client must start over with EHLO and knows nothing learnt before the handshake.
        s.tls, s.helo, s.esmtp, s.auth_user = True, None, False, None
        s.reset()

    async def read_auth_response(self, reader, writer, challenge):
        await self.reply(writer, 334, challenge)
        line = await self.read_line(reader, MAX_COMMAND_LINE)
        return line.rstrip(b"\r\n").decode("ascii", "replace")

    async def cmd_AUTH(self, s, arg, reader, writer):
        if self.auth is None:
            return await self.reply(writer, 502, "5.5.1 AUTH not available")
        if s.helo is None or not s.esmtp:
            return await self.reply(writer, 503, "5.5.1 Send EHLO first")
        if s.auth_user is not None:
            return await self.reply(writer, 503, "5.5.1 Already authenticated")
        if s.mail_from is not None:
            return await self.reply(writer, 503, "5.5.1 AUTH not allowed during a mail transaction")
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        try:
            if mech == "PLAIN":
                resp = initial or await self.read_auth_response(reader, writer, "")
                if resp == "*":
                    return await self.reply(writer, 501, "5.7.0 Authentication cancelled")
                parts = b64decode(resp).split(b"\0")
                if len(parts) != 3:
                    return await self.reply(writer, 501, "5.5.2 Malformed PLAIN response")
                authzid, user, password = (p.decode() for p in parts)
                ok = (user, password) == self.auth and authzid in ("", user)
            elif mech == "LOGIN":
                u = initial or await self.read_auth_response(reader, writer, "VXNlcm5hbWU6")
                if u == "*":
                    return await self.reply(writer, 501, "5.7.0 Authentication cancelled")
                p = await self.read_auth_response(reader, writer, "UGFzc3dvcmQ6")
                if p == "*":
                    return await self.reply(writer, 501, "5.7.0 Authentication cancelled")
                user, password = b64decode(u).decode(), b64decode(p).decode()
                ok = (user, password) == self.auth
            else:
                return await self.reply(writer, 504, "5.5.4 Unrecognized authentication mechanism")
        except (binascii.Error, UnicodeDecodeError):
            return await self.reply(writer, 501, "5.5.2 Cannot decode response")
        if not ok:
            self.stats["auth_failures"] += 1
            return await self.reply(writer, 535, "5.7.8 Authentication credentials invalid")
        self.stats["auth_successes"] += 1
        s.auth_user = user
        await self.reply(writer, 235, "2.7.0 Authentication successful")

    async def cmd_MAIL(self, s, arg, reader, writer):
        if s.helo is None:
            return await self.reply(writer, 503, "5.5.1 Send EHLO/HELO first")
        if self.auth is not None and s.auth_user is None:
            return await self.reply(writer, 530, "5.7.0 Authentication required")
        if s.mail_from is not None:
            return await self.reply(writer, 503, "5.5.1 Nested MAIL command")
        m = MAIL_RE.fullmatch(arg)
        if not m:
            return await self.reply(writer, 501, "5.5.4 Syntax: MAIL FROM:<address>")
        for param in m.group(2).split():
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE" and s.esmtp and value.isdigit():
                if int(value) > self.max_size:
                    return await self.reply(writer, 552, "5.3.4 Message size exceeds fixed limit")
            elif key == "BODY" and s.esmtp and value.upper() in ("7BIT", "8BITMIME"):
                pass
            elif key == "AUTH" and s.esmtp and self.auth is not None:
                pass
            else:
                return await self.reply(writer, 555, f"5.5.4 Unsupported parameter {param}")
        s.mail_from = m.group(1)
        await self.reply(writer, 250, "2.1.0 Sender OK")

    async def cmd_RCPT(self, s, arg, reader, writer):
        if s.mail_from is None:
            return await self.reply(writer, 503, "5.5.1 Need MAIL before RCPT")
        m = RCPT_RE.fullmatch(arg)
        if not m:
            return await self.reply(writer, 501, "5.5.4 Syntax: RCPT TO:<address>")
        if m.group(2).strip():
            return await self.reply(writer, 555, "5.5.4 RCPT parameters are not supported")
        if len(s.rcpt_to) >= MAX_RECIPIENTS:
            return await self.reply(writer, 452, "4.5.3 Too many recipients")
        s.rcpt_to.append(m.group(1))
        await self.reply(writer, 250, "2.1.5 Recipient OK")

    async def cmd_DATA(self, s, arg, reader, writer):
        if arg:
            return await self.reply(writer, 501, "5.5.4 DATA takes no arguments")
        if s.mail_from is None:
            return await self.reply(writer, 503, "5.5.1 Need MAIL command")
        if not s.rcpt_to:
            return await self.reply(writer, 503, "5.5.1 Need RCPT command")
        await self.reply(writer, 354, "Start mail input; end with <CRLF>.<CRLF>")
        data, size, after_crlf = [], 0, True
        while True:
            line = await self.read_line(reader, MAX_LINE)
            # Only CRLF "." CRLF ends the data (RFC 5321 §4.1.1.4); a dot after a bare LF is message text, which
            # keeps the fake from accepting the line endings that SMTP smuggling relies on.
            if after_crlf and line == b".\r\n":
                break
            if after_crlf and line.startswith(b"."):
                line = line[1:]  # §4.5.2 transparency
            after_crlf = line.endswith(b"\r\n")
            size += len(line)
            if size <= self.max_size:
                data.append(line)
        msg_from, rcpt = s.mail_from, s.rcpt_to
        s.reset()
        if size > self.max_size:
            return await self.reply(writer, 552, "5.3.4 Message size exceeds fixed limit")
        fault = self.take_fault(("tempfail", "permfail", "drop_after_data"))
        if fault == "drop_after_data":
            self.stats["messages_dropped"] += 1
            raise Dropped()
        if fault == "tempfail":
            self.stats["messages_tempfailed"] += 1
            return await self.reply(writer, 451, "4.3.0 Temporary failure (injected)")
        if fault == "permfail":
            self.stats["messages_permfailed"] += 1
            return await self.reply(writer, 554, "5.6.0 Transaction failed (injected)")
        self.messages.append({"mail_from": msg_from, "rcpt_to": rcpt,
                              "data": b"".join(data).decode("utf-8", "replace"), "tls": s.tls,
                              "auth_user": s.auth_user, "helo": s.helo, "t": time.monotonic()})
        del self.messages[:-MAX_MESSAGES]
        self.stats["messages_accepted"] += 1
        await self.reply(writer, 250, f"2.0.0 OK queued as {self.stats['messages_accepted']}")

    async def cmd_RSET(self, s, arg, reader, writer):
        s.reset()
        await self.reply(writer, 250, "2.0.0 OK")

    async def cmd_NOOP(self, s, arg, reader, writer):
        await self.reply(writer, 250, "2.0.0 OK")

    async def cmd_VRFY(self, s, arg, reader, writer):
        await self.reply(writer, 252, "2.5.0 Cannot VRFY user")

    async def cmd_QUIT(self, s, arg, reader, writer):
        await self.reply(writer, 221, "2.0.0 Bye")
        return False

    # control API

    def control(self, req, proto):
        key = (req.method, req.path)
        if key == ("GET", "/messages"):
            return web.json_reply(200, {"messages": self.messages, "count": len(self.messages)}, req)
        if key == ("DELETE", "/messages"):
            self.messages.clear()
            return web.json_reply(200, {"ok": True}, req)
        if key == ("GET", "/stats"):
            return web.json_reply(200, dict(self.stats, listening=self.server is not None, fault=self.mode), req)
        if key == ("GET", "/faults"):
            return web.json_reply(200, self.fault_state(), req)
        if key == ("POST", "/faults"):
            try:
                mode, times, delay = self.validate_fault(json.loads(req.body or b"null"))
            except ValueError as e:
                return web.json_reply(400, {"error": str(e)}, req)

            async def apply(p):
                try:
                    if mode == "down":
                        self.stop_listening()
                    elif self.server is None:
                        await self.listen()
                except OSError as e:
                    p.write(web.json_reply(500, {"error": f"cannot reopen port {self.port}: {e}"}, req)[0])
                    return
                self.mode, self.remaining, self.delay_ms = mode, times, delay
                p.write(web.json_reply(200, self.fault_state(), req)[0])

            return apply, not req.keep_alive
        if req.path in ("/messages", "/stats", "/faults"):
            return web.json_reply(405, {"error": "method not allowed"}, req)
        return web.json_reply(404, {"error": "not found"}, req)

    def fault_state(self):
        return {"mode": self.mode, "remaining": -1 if self.remaining is None else self.remaining,
                "delay_ms": self.delay_ms}

    @staticmethod
    def validate_fault(obj):
        if not isinstance(obj, dict):
            raise ValueError("fault must be a JSON object")
        unknown = set(obj) - {"mode", "times", "delay_ms"}
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        mode = obj.get("mode")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {list(FAULT_MODES)}")
        times = obj.get("times")
        if times is not None:
            if isinstance(times, bool) or not isinstance(times, int) or times < -1 or times == 0:
                raise ValueError("times must be a positive integer or -1 (unlimited)")
            if mode in ("down", "ok"):
                raise ValueError(f"times does not apply to {mode}: down lasts until the next POST /faults")
            if times == -1:
                times = None
        delay = obj.get("delay_ms", 0)
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ValueError("delay_ms must be a non-negative integer")
        if (mode == "slow") != ("delay_ms" in obj):
            raise ValueError("delay_ms is required for slow and only for slow")
        return mode, times, delay


def b64decode(s):
    return base64.b64decode(s, validate=True)


async def amain(args):
    loop = asyncio.get_running_loop()
    fake = SmtpFake(args)
    await fake.listen()
    ctl_conns = set()
    control = await loop.create_server(lambda: web.HttpProtocol(fake.control, 1 << 20, ctl_conns),
                                       fake.host, args.control_port)
    web.write_ready_file(args.ready_file, {"port": fake.port, "control_port": control.sockets[0].getsockname()[1],
                                           "pid": os.getpid()})
    await web.wait_for_signal()
    fake.stop_listening()
    control.close()
    for w in list(fake.writers):
        w.transport.abort()
    for p in list(ctl_conns):
        p.abort()
    await asyncio.sleep(0)


def main():
    ap = web.common_args("Fake ESMTP sink with fault injection (see README.md).")
    ap.add_argument("--auth", metavar="USER:PASS", help="require AUTH PLAIN/LOGIN with these credentials")
    ap.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (smtps)")
    ap.add_argument("--hostname", default="fake-smtp.localhost", help="name in the greeting and EHLO reply")
    ap.add_argument("--max-size", type=int, default=10 << 20, help="SIZE limit in bytes")
    args = ap.parse_args()
    web.check_tls_args(ap, args)
    if args.implicit_tls and not args.tls_cert:
        ap.error("--implicit-tls needs --tls-cert and --tls-key")
    if args.auth is not None and ":" not in args.auth:
        ap.error("--auth takes USER:PASS")
    try:
        asyncio.run(amain(args))
    except OSError as e:
        print(f"fake_smtp: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
