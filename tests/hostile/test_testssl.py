"""TLS quality of both relay listeners, judged by testssl.sh (the Debian package ``testssl.sh``).

The relay offers TLS 1.2 and 1.3 only, no weak cipher category, and testssl finds nothing of
severity MEDIUM or above, apart from findings that follow from the test PKI being a private,
throw-away CA that testssl does not trust. Those are listed by id in ``EXPECTED`` with the reason,
so that anything new, at any severity that fails, is still caught.

The gateway listener demands a client certificate; testssl has none, but protocols, ciphers,
server preferences, the server certificate and the vulnerability probes all run before the
certificate request matters.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import Stack, make_stack

pytestmark = pytest.mark.e2e

CHECKS = [
    "--protocols",  # -p: SSLv2 .. TLS 1.3
    "--std",  # -s: cipher categories (NULL, aNULL, EXPORT, LOW, 3DES, AVERAGE, STRONG)
    "--fs",  # -f: forward secrecy, curves
    "--server-preference",  # -P: server cipher order
    "--server-defaults",  # -S: certificate, extensions, session resumption
    "--vulnerable",  # -U: Heartbleed, CCS, ROBOT, renegotiation, CRIME, POODLE, SWEET32, ...
    "--cipher-per-proto",  # -E: every cipher offered, per protocol
]
FAILING = {"MEDIUM", "HIGH", "CRITICAL", "FATAL"}
EXPECTED = {
    # The relay certificate comes from a CA made for this test run; clients pin that CA
    # (gateway.toml relay.ca, gateway connect --ca), testssl cannot know it.
    "cert_chain_of_trust": "private CA, not in testssl's trust store",
    # The vendor PKI is private and pinned: it publishes no CRL or OCSP responder, which
    # testssl rates HIGH for any certificate, as it would for a public web server.
    "cert_revocation": "private pinned CA without CRL/OCSP",
}
PROTOCOLS = {"SSLv2": False, "SSLv3": False, "TLS1": False, "TLS1_1": False}
PROTOCOLS |= {"TLS1_2": True, "TLS1_3": True}
WEAK_CIPHERS = ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW"]
WEAK_CIPHERS += ["cipherlist_3DES_IDEA"]
LISTENERS = {"gateway listener": "relay_gw", "engineer listener": "relay_eng"}


def _testssl_binary() -> str:
    found = shutil.which("testssl") or shutil.which("testssl.sh")
    if found is None:
        raise AssertionError(
            "testssl is not installed: install the Debian package testssl.sh "
            "(apt-get install testssl.sh; scripts/test.sh does it)"
        )
    return found


@pytest.fixture(scope="module")
def scans() -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Both listeners scanned side by side; their findings (testssl's flat JSON) by listener."""
    binary = _testssl_binary()
    s, tmp = make_stack()
    out = Path(tempfile.mkdtemp(prefix="testssl-", dir=s.workdir))
    try:
        s.start_relay()
        running = {name: _start_scan(binary, s, port, out) for name, port in LISTENERS.items()}
        results = {name: _finish_scan(name, *scan) for name, scan in running.items()}
        yield results
    finally:
        s.stop_all()
        tmp.cleanup()


def _start_scan(
    binary: str, stack: Stack, port: str, out: Path
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    report, log = out / f"{port}.json", out / f"{port}.log"
    argv = [binary, "--quiet", "--warnings", "off", "--color", "0", "--ip", "127.0.0.1"]
    argv += ["--connect-timeout", "10", "--openssl-timeout", "10", "--jsonfile", str(report)]
    argv += [*CHECKS, f"localhost:{stack.ports[port]}"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    return proc, report, log


def _finish_scan(
    name: str, proc: subprocess.Popen[bytes], report: Path, log: Path
) -> list[dict[str, Any]]:
    try:
        proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"testssl on the {name} ran over 240 s:\n{log.read_text()[-3000:]}"
        ) from None
    if not report.exists():
        raise AssertionError(
            f"testssl on the {name} wrote no report (exit {proc.returncode}):\n"
            + log.read_text()[-3000:]
        )
    findings: list[dict[str, Any]] = json.loads(report.read_text())
    ids = {f["id"] for f in findings}
    if "scanTime" not in ids or "scanProblem" in ids:
        raise AssertionError(
            f"testssl on the {name} did not finish its scan:\n{_listing(findings)}"
        )
    return findings


def _listing(findings: list[dict[str, Any]]) -> str:
    notable = [f for f in findings if f["severity"] not in ("OK", "INFO", "DEBUG")]
    return "\n".join(f"  {f['id']} [{f['severity']}] {f['finding']}" for f in notable)


@pytest.mark.parametrize("listener", list(LISTENERS))
def test_only_tls_1_2_and_1_3_are_offered(
    scans: dict[str, list[dict[str, Any]]], listener: str
) -> None:
    by_id = {f["id"]: f["finding"] for f in scans[listener]}
    offered = {p: by_id.get(p, "?") for p in PROTOCOLS}
    wrong = {
        p: text
        for p, text in offered.items()
        if text.startswith("offered") != PROTOCOLS[p] or text == "?"
    }
    assert not wrong, f"{listener}: {wrong} (all: {offered})"


@pytest.mark.parametrize("listener", list(LISTENERS))
def test_no_weak_cipher_category_is_offered(
    scans: dict[str, list[dict[str, Any]]], listener: str
) -> None:
    by_id = {f["id"]: f["finding"] for f in scans[listener]}
    offered = {c: by_id.get(c, "?") for c in WEAK_CIPHERS if by_id.get(c) != "not offered"}
    assert not offered, f"{listener} offers weak ciphers: {offered}"


@pytest.mark.parametrize("listener", list(LISTENERS))
def test_no_finding_of_medium_severity_or_above(
    scans: dict[str, list[dict[str, Any]]], listener: str
) -> None:
    findings = scans[listener]
    bad = [f for f in findings if f["severity"] in FAILING and f["id"] not in EXPECTED]
    assert not bad, (
        f"testssl on the {listener}:\n"
        + "\n".join(f"  {f['id']} [{f['severity']}] {f['finding']}" for f in bad)
        + f"\nall findings that are not OK/INFO:\n{_listing(findings)}"
    )
    print(f"\n{listener}: findings that are not OK/INFO:\n{_listing(findings)}")


@pytest.mark.parametrize("listener", list(LISTENERS))
def test_tls_1_2_offers_only_aead_suites(
    scans: dict[str, list[dict[str, Any]]], listener: str
) -> None:
    """CBC suites (testssl's "AVERAGE" list, LUCKY13) are not offered: AES-GCM and ChaCha20."""
    by_id = {f["id"]: f for f in scans[listener]}
    average = by_id.get("cipherlist_AVERAGE", {}).get("finding", "?")
    lucky13 = by_id.get("LUCKY13", {}).get("severity", "?")
    assert average == "not offered", f"{listener}: CBC suites offered: {average}"
    assert lucky13 in ("OK", "INFO"), f"{listener}: LUCKY13 is {lucky13}"
