"""The relay's container image definition (deploy/Containerfile.relay): well formed, built from
files that exist, run unprivileged, and its relay.toml a config the relay accepts.  (No image is
built here: the test machines have no container engine running.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.config import load_relay_config
from tests.helpers.pki import make_pki

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "Containerfile.relay"
RELAY_TOML = ROOT / "deploy" / "container" / "relay.toml"
KNOWN = {
    "FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "VOLUME", "EXPOSE", "STOPSIGNAL",
    "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL", "ARG",
}  # fmt: skip


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in CONTAINERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        found.append((word, rest.strip()))
        pending = ""
    assert not pending, "a continuation line at the end"
    return found


def test_instructions_are_known_and_stages_named() -> None:
    steps = instructions()
    assert {word for word, _ in steps} <= KNOWN, steps
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    assert all(f.startswith("docker.io/library/python:3.11-slim-bookworm") for f in froms)


def test_copied_files_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for word, rest in instructions():
        if word != "COPY" or rest.startswith("--from="):
            continue
        *sources, _ = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/").split("/")[0] not in ignored, source


def test_runs_unprivileged_in_exec_form() -> None:
    steps = instructions()
    users = [rest for word, rest in steps if word == "USER"]
    assert users == ["gateway-relay"]
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    cmd = json.loads(dict(steps)["CMD"])
    assert entry == ["gateway"]
    assert cmd == ["relay", "-c", "/etc/gateway-relay/relay.toml"]
    # The image's relay.toml is the one copied to that path.
    copies = [rest for word, rest in steps if word == "COPY"]
    assert "deploy/container/relay.toml /etc/gateway-relay/relay.toml" in copies


def test_exposed_ports_are_the_listeners() -> None:
    steps = instructions()
    exposed = {int(p) for p in dict(steps)["EXPOSE"].split()}
    listens = {int(p) for p in re.findall(r'^listen = "[^"]*:(\d+)"', RELAY_TOML.read_text(), re.M)}
    assert exposed == listens
    health = dict(steps)["HEALTHCHECK"]
    assert "8443" in health  # the gateway listener answers


def test_relay_toml_is_accepted(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "tls")
    text = RELAY_TOML.read_text()
    text = text.replace("/etc/gateway-relay/tls/ca.pem", str(pki.ca_cert))
    text = text.replace("/etc/gateway-relay/tls/relay.pem", str(pki.relay_cert))
    text = text.replace("/etc/gateway-relay/tls/relay.key", str(pki.relay_key))
    text = text.replace("/var/lib/gateway-relay", str(tmp_path / "state"))
    (tmp_path / "relay.toml").write_text(text)
    config = load_relay_config(tmp_path / "relay.toml")
    assert config.gateways.listen.port == 8443
    assert config.engineers.tokens == tmp_path / "state" / "engineers.toml"
    assert config.state_dir == tmp_path / "state"
