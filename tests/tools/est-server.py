#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small RFC 7030 EST server for the integration tests only; the openssl CLI is its CA.

    est-server.py --cert server.pem --key server.key --client-ca client-ca.pem \\
        --ca-cert issuing.pem --ca-key issuing.key --state-dir DIR \\
        [--alt-ca-cert alt.pem --alt-ca-key alt.key] [--lifetime SECONDS] \\
        [--port PORT] [--port-file PATH] [--mode-file PATH] [--issued-log PATH]

HTTPS on 127.0.0.1 with a required client certificate (the gateway enrols on behalf of its
devices), serving under /.well-known/est/:
  GET  cacerts          the --ca-cert certificates as a base64 certs-only PKCS#7
  POST simpleenroll     a base64 DER PKCS#10 request in, the issued certificate out as a
  POST simplereenroll   base64 certs-only PKCS#7: subject kept, a clientAuth leaf, valid from
                        now - 5 s for --lifetime seconds (default 86400)
Anything else is 404.

The first line of --mode-file, read on every request (missing or empty: "ok"), steers the
enrolment operations: "MODE [OPERATION...]", where an OPERATION list limits MODE to those
operations (the others behave as "ok"):
  ok         issue with --ca-cert/--ca-key
  refuse     403 with a one-line reason naming the request's CN
  pending    202 with Retry-After: 2
  untrusted  issue with --alt-ca-cert/--alt-ca-key, a CA the broker does not trust
  fail       500

--port 0 (the default) takes a free port; --port-file receives the bound port once listening.
--issued-log gets one line per issued certificate: OPERATION CN SERIAL-HEX NOT-AFTER PATH.
Each request is logged to stderr as: CLIENT-CN METHOD PATH STATUS. SIGTERM stops the server.
"""

import argparse
import base64
import binascii
import datetime
import http.server
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

EST_PREFIX = "/.well-known/est/"
ENROL_OPERATIONS = ("simpleenroll", "simplereenroll")
MAX_BODY = 64 * 1024
BACKDATE = datetime.timedelta(seconds=5)

# `openssl ca` rather than `openssl x509 -req`: only it takes exact start and end dates in
# OpenSSL 3.0 (x509 -req has just -days), and the tests need certificates living seconds.
CA_CONFIG = """\
[ca]
default_ca = est

[est]
database = {state}/index.txt
new_certs_dir = {state}/issued
# Renewals reissue the same subject while the old certificate is still valid.
unique_subject = no
# Random serials stay unique even across state dirs sharing an issuing CA. The -rand_serial
# flag is not enough in OpenSSL 3.0: without this line it still insists on a serial file.
rand_serial = yes
policy = any_subject
copy_extensions = none
x509_extensions = device_leaf

[any_subject]
# With -preserveDN, fields not named here are kept as they are, so any subject passes.
commonName = optional

[device_leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def log(message):
    print(f"est-server: {message}", file=sys.stderr, flush=True)


class OpensslError(Exception):
    """The openssl CLI exited non-zero."""

    def __init__(self, args, stderr):
        super().__init__(f"openssl {' '.join(args)}: {stderr.strip()}")


class TextAnswer(Exception):
    """Ends a request with a status and a one-line text body instead of a certificate."""

    def __init__(self, status, text, headers=None):
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}


def openssl(*args, stdin=b""):
    """Runs the openssl CLI, returning its stdout and its stderr (some verdicts are only there)."""
    run = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    stderr = run.stderr.decode(errors="replace")
    if run.returncode != 0:
        raise OpensslError(args, stderr)
    return run.stdout, stderr


def certs_only_pkcs7(cert_file):
    return openssl("crl2pkcs7", "-nocrl", "-certfile", str(cert_file), "-outform", "DER")[0]


def asn1_time(moment):
    return moment.strftime("%Y%m%d%H%M%SZ")


def load_csr(body):
    """The request's PEM form and subject CN from a base64 DER PKCS#10 body; 400 if unusable."""
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
        pem = openssl("req", "-inform", "DER", "-outform", "PEM", stdin=der)[0]
    except (binascii.Error, OpensslError) as error:
        raise TextAnswer(400, "request body is not a base64 DER PKCS#10 request") from error
    subject, verdict = openssl("req", "-verify", "-noout", "-subject",
                               "-nameopt", "sep_multiline,sname,utf8,esc_ctrl", stdin=pem)
    # OpenSSL 3.0 `req -verify` exits 0 even when the signature is bad; only stderr tells.
    if "verify OK" not in verdict:
        raise TextAnswer(400, "PKCS#10 request self-signature does not verify")
    return pem, common_name(subject.decode(errors="replace"))


def common_name(subject):
    """The CN in `-nameopt sep_multiline,sname` output: "subject=", then "  KEY=VALUE" lines."""
    for line in subject.splitlines()[1:]:
        key, _, value = line.strip().partition("=")
        if key == "CN":
            return value
    return "-"


class Ca:
    """The issuing side: the openssl ca database in the state dir, the modes, the issued log."""

    def __init__(self, args):
        self.ca = (args.ca_cert, args.ca_key)
        self.alt_ca = (args.alt_ca_cert, args.alt_ca_key) if args.alt_ca_cert else None
        self.lifetime = datetime.timedelta(seconds=args.lifetime)
        self.mode_file, self.issued_log = args.mode_file, args.issued_log
        self.state = Path(args.state_dir).resolve()
        (self.state / "issued").mkdir(parents=True, exist_ok=True)
        (self.state / "index.txt").touch()
        self.config = self.state / "ca.cnf"
        self.config.write_text(CA_CONFIG.format(state=self.state))
        # The openssl ca database is rewritten whole by each call: one issuance at a time.
        self.lock = threading.Lock()

    def cacerts(self):
        return certs_only_pkcs7(self.ca[0])

    def mode(self, operation):
        """The mode file's verdict for this operation: a MODES key."""
        try:
            lines = Path(self.mode_file).read_text().splitlines() if self.mode_file else []
        except FileNotFoundError:
            lines = []
        words = lines[0].split() if lines else []
        if not words or (words[1:] and operation not in words[1:]):
            return "ok"
        if words[0] not in MODES:
            raise TextAnswer(500, f"unknown mode {words[0]!r} in {self.mode_file}")
        return words[0]

    def enrol(self, operation, content_type, body):
        """The DER certs-only PKCS#7 answering an enrolment, or a TextAnswer."""
        if content_type.split(";")[0].strip().lower() != "application/pkcs10":
            raise TextAnswer(415, "expected Content-Type: application/pkcs10")
        csr, cn = load_csr(body)
        return MODES[self.mode(operation)](self, operation, csr, cn)

    def refuse(self, _operation, _csr, cn):
        raise TextAnswer(403, f"enrolment refused by EST server policy for CN={cn}")

    def pending(self, _operation, _csr, cn):
        raise TextAnswer(202, f"enrolment for CN={cn} is pending approval, retry later",
                         {"Retry-After": "2"})

    def fail(self, _operation, _csr, _cn):
        raise TextAnswer(500, "EST server failure (mode file says fail)")

    def issue_trusted(self, operation, csr, cn):
        return self.issue(operation, csr, cn, self.ca)

    def issue_untrusted(self, operation, csr, cn):
        if self.alt_ca is None:
            raise TextAnswer(500, "mode untrusted needs --alt-ca-cert and --alt-ca-key")
        return self.issue(operation, csr, cn, self.alt_ca)

    def issue(self, operation, csr, cn, issuer):
        start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - BACKDATE
        with self.lock, tempfile.NamedTemporaryFile(dir=self.state, suffix=".csr") as request:
            request.write(csr)
            request.flush()
            cert = openssl("ca", "-batch", "-config", str(self.config),
                           "-cert", issuer[0], "-keyfile", issuer[1], "-in", request.name,
                           "-preserveDN", "-notext", "-md", "sha256",
                           "-startdate", asn1_time(start),
                           "-enddate", asn1_time(start + self.lifetime))[0]
            path = self.record(operation, cert, cn)
        return certs_only_pkcs7(path)

    def record(self, operation, cert, cn):
        """The issued certificate's file (openssl ca names it SERIAL.pem), logged if asked."""
        fields = dict(line.split("=", 1) for line in openssl(
            "x509", "-noout", "-serial", "-enddate", stdin=cert)[0].decode().splitlines())
        path = self.state / "issued" / f"{fields['serial']}.pem"
        if self.issued_log:
            with open(self.issued_log, "a", encoding="utf-8") as issued:
                issued.write(f"{operation} {cn} {fields['serial']} {fields['notAfter']} {path}\n")
        return path


MODES = {
    "ok": Ca.issue_trusted,
    "refuse": Ca.refuse,
    "pending": Ca.pending,
    "untrusted": Ca.issue_untrusted,
    "fail": Ca.fail,
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A client that stalls mid-request must not hold its thread forever.
    timeout = 30

    def do_GET(self):
        if self.operation() != "cacerts":
            return self.send_text(404, "no such EST operation")
        return self.answer(lambda: self.send_pkcs7(self.server.ca.cacerts(),
                                                   "application/pkcs7-mime"))

    def do_POST(self):
        operation = self.operation()
        if operation not in ENROL_OPERATIONS:
            return self.send_text(404, "no such EST operation")
        return self.answer(lambda: self.send_pkcs7(
            self.server.ca.enrol(operation, self.headers.get("Content-Type", ""),
                                 self.read_body()),
            "application/pkcs7-mime; smime-type=certs-only"))

    def operation(self):
        path = self.path.split("?", 1)[0]
        return path[len(EST_PREFIX):] if path.startswith(EST_PREFIX) else None

    def answer(self, respond):
        """Runs respond, sending a TextAnswer or an openssl failure as a text answer instead."""
        try:
            respond()
        except TextAnswer as answer:
            self.send_text(answer.status, answer.text, answer.headers)
        except OpensslError as error:
            log(error)
            self.send_text(500, "certificate issuance failed, see the EST server's log")

    def read_body(self):
        # The body is not read on these refusals, so the connection must close: what is left
        # of it would otherwise be parsed as the next request.
        try:
            length = int(self.headers["Content-Length"])
        except (TypeError, ValueError) as error:
            raise TextAnswer(411, "Content-Length required", {"Connection": "close"}) from error
        if not 0 <= length <= MAX_BODY:
            raise TextAnswer(413, f"request body over {MAX_BODY} bytes", {"Connection": "close"})
        return self.rfile.read(length)

    def send_pkcs7(self, der, content_type):
        self.send_body(200, base64.encodebytes(der), content_type,
                       {"Content-Transfer-Encoding": "base64"})

    def send_text(self, status, text, headers=None):
        self.send_body(status, f"{text}\n".encode(), "text/plain", headers or {})

    def send_body(self, status, body, content_type, headers):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def client_cn(self):
        subject = self.connection.getpeercert().get("subject", ())
        return next((value for rdn in subject for key, value in rdn if key == "commonName"), "-")

    def log_request(self, code="-", size="-"):
        log(f"{self.client_cn()} {self.command} {self.path} {int(code)}")

    def log_message(self, fmt, *args):
        log(fmt % args)


class EstServer(http.server.ThreadingHTTPServer):
    def __init__(self, port, tls, ca):
        super().__init__(("127.0.0.1", port), Handler)
        self.socket = tls.wrap_socket(self.socket, server_side=True,
                                      do_handshake_on_connect=False)
        self.ca = ca

    def finish_request(self, request, client_address):
        # The handshake runs here, in the connection's own thread: in accept() it would let
        # one silent client stall the whole server.
        request.settimeout(Handler.timeout)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as error:
            log(f"TLS handshake with {client_address[0]}:{client_address[1]} failed: {error}")
            return
        super().finish_request(request, client_address)


def tls_context(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.load_verify_locations(args.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def write_port_file(path, port):
    # Through a rename, so the harness polling for the file never reads it half written.
    temporary = f"{path}.tmp"
    Path(temporary).write_text(f"{port}\n")
    os.replace(temporary, path)


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_args():
    parser = argparse.ArgumentParser(description="RFC 7030 EST server for the tests.")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--port-file", help="where to write the bound port")
    parser.add_argument("--cert", required=True, help="the server's TLS certificate")
    parser.add_argument("--key", required=True, help="the server's TLS key")
    parser.add_argument("--client-ca", required=True, help="CA(s) for client certificates")
    parser.add_argument("--ca-cert", required=True, help="issuing CA certificate(s)")
    parser.add_argument("--ca-key", required=True, help="issuing CA key")
    parser.add_argument("--alt-ca-cert", help="CA certificate for mode untrusted")
    parser.add_argument("--alt-ca-key", help="CA key for mode untrusted")
    parser.add_argument("--lifetime", type=positive_int, default=86400,
                        help="seconds an issued certificate lives (default 86400)")
    parser.add_argument("--state-dir", required=True, help="CA database and issued certificates")
    parser.add_argument("--mode-file", help="first line: MODE [OPERATION...]")
    parser.add_argument("--issued-log", help="one line per issued certificate")
    args = parser.parse_args()
    if (args.alt_ca_cert is None) != (args.alt_ca_key is None):
        parser.error("--alt-ca-cert and --alt-ca-key go together")
    return args


def main():
    args = parse_args()
    server = EstServer(args.port, tls_context(args), Ca(args))
    # The tests stop the server by PID: SystemExit unwinds serve_forever and closes the socket.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    with server:
        port = server.server_address[1]
        if args.port_file:
            write_port_file(args.port_file, port)
        log(f"listening on 127.0.0.1:{port}")
        server.serve_forever()


if __name__ == "__main__":
    main()
