# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The one throw-away stack (gateway/demo/stack.py): its files, configs, commands and probes.

The rendered configs are checked by loading them with the product's own loaders: what the demo,
the tests and the benchmarks write is what ``gateway run`` and ``gateway relay`` accept.
"""

from __future__ import annotations

import socket
import tempfile
import tomllib
from pathlib import Path

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import (
    AccessMode,
    Address,
    Target,
    TargetKind,
    load_gateway_config,
    load_relay_config,
)
from gateway.demo.stack import (
    LOOPBACK,
    Layout,
    Ports,
    connect_args,
    free_ports,
    gateway_toml,
    listening,
    log_tail,
    make_engineer,
    make_pki,
    processor_args,
    python_gateway,
    relay_args,
    relay_toml,
    run_args,
    tunnel_problem,
)
from gateway.identity import gateway_id_from_certificate
from gateway.pki import PKIError
from gateway.relay.credentials import read_engineers

PORTS = Ports(
    processor=8000,
    relay_gateways=8443,
    relay_engineers=9443,
    relay_metrics=9109,
    status=8081,
    metrics=9108,
    forward=8080,
)


class StackCase(SynchronousTestCase):
    def workdir(self) -> Path:
        tmp = tempfile.TemporaryDirectory(prefix="test-stack-")
        self.addCleanup(tmp.cleanup)
        return Path(tmp.name)

    def layout(self, *, pki: str | None = None) -> Layout:
        """A layout whose certificate files exist (not empty: the loaders refuse an empty one;
        reading them is the TLS code's job)."""
        workdir = self.workdir()
        layout = Layout(workdir) if pki is None else Layout(workdir, pki=workdir / pki)
        layout.pki.mkdir(exist_ok=True)
        for path in (layout.ca, layout.relay_cert, layout.relay_key):
            path.write_text("dummy\n")
        for path in (layout.gateway_cert, layout.gateway_key):
            path.write_text("dummy\n")
            path.chmod(0o600)
        return layout

    def write(self, path: Path, text: str) -> Path:
        path.write_text(text)
        return path


class RelayConfigTests(StackCase):
    def test_the_rendered_relay_config_loads_with_the_stack_addresses(self) -> None:
        layout = self.layout()
        config = load_relay_config(self.write(layout.relay_config, relay_toml(layout, PORTS)))
        self.assertEqual(config.gateways.listen, Address(LOOPBACK, 8443))
        self.assertEqual(config.engineers.listen, Address(LOOPBACK, 9443))
        self.assertEqual(config.metrics_listen, Address(LOOPBACK, 9109))
        self.assertEqual(config.gateways.ca, layout.ca.resolve())
        self.assertEqual(config.engineers.tokens, layout.engineers.resolve())
        self.assertEqual(config.engineers.cert, layout.relay_cert.resolve())

    def test_keyword_sections_add_keys_and_sections(self) -> None:
        layout = self.layout()
        text = relay_toml(
            layout,
            PORTS,
            gateways={"heartbeat_interval": 2, "heartbeat_timeout": 3.5},
            service={"drain_timeout": 3},
        )
        config = load_relay_config(self.write(layout.relay_config, text))
        self.assertEqual(
            (config.gateways.heartbeat.interval, config.gateways.heartbeat.timeout), (2, 3.5)
        )
        self.assertEqual(config.drain_timeout, 3)

    def test_paths_are_relative_to_the_workdir_or_absolute_when_asked(self) -> None:
        layout = self.layout(pki="pki")
        relative = tomllib.loads(relay_toml(layout, PORTS))
        self.assertEqual(relative["gateways"]["ca"], "pki/ca.pem")
        self.assertEqual(relative["engineers"]["tokens"], "engineers.toml")
        absolute = tomllib.loads(relay_toml(layout, PORTS, relative=False))
        self.assertEqual(absolute["gateways"]["ca"], str(layout.ca))
        load_relay_config(self.write(layout.relay_config, relay_toml(layout, PORTS)))

    def test_every_setting_is_explained_for_a_reader(self) -> None:
        text = relay_toml(self.layout(), PORTS, written_by="`gateway demo`")
        self.assertTrue(text.startswith("# relay.toml written by `gateway demo`"))
        self.assertIn("# Paths are relative to this file's folder.", text)
        self.assertIn("[gateways]                      # where gateways dial in", text)
        self.assertIn("gateway relay add-engineer NAME -c relay.toml", text)


class GatewayConfigTests(StackCase):
    def load(self, layout: Layout, text: str) -> object:
        return load_gateway_config(self.write(layout.gateway_config, text))

    def test_the_rendered_gateway_config_loads_with_the_stack_addresses_and_mode(self) -> None:
        layout = self.layout()
        for mode in AccessMode:
            text = gateway_toml(layout, PORTS, gateway_id="demo-gateway", mode=mode.value)
            config = load_gateway_config(self.write(layout.gateway_config, text))
            self.assertEqual(config.access_mode, mode)
            self.assertEqual(config.relay.address, Address(LOOPBACK, 8443))
            self.assertEqual(config.status_listen, Address(LOOPBACK, 8081))
            self.assertEqual(config.metrics_listen, Address(LOOPBACK, 9108))
            web = Target("web", Address(LOOPBACK, 8000), kind=TargetKind.HTTP)
            self.assertEqual(config.targets, (web,))
            self.assertEqual(config.relay.cert, layout.gateway_cert.resolve())

    def test_targets_keep_a_connect_timeout_kind_and_view_websocket_that_are_not_defaults(
        self,
    ) -> None:
        layout = self.layout()
        targets = [
            Target("web", Address(LOOPBACK, 8000)),
            Target("stopped", Address(LOOPBACK, 1), connect_timeout=2),
            Target("hmi", Address(LOOPBACK, 81), kind=TargetKind.HTTP, view_websocket=True),
            Target("v6", Address("::1", 80)),
        ]
        text = gateway_toml(layout, PORTS, gateway_id="g", targets=targets)
        config = load_gateway_config(self.write(layout.gateway_config, text))
        self.assertEqual(config.targets, tuple(targets))
        self.assertEqual(text.count("connect_timeout"), 1)

    def test_keyword_sections_override_and_remove_keys(self) -> None:
        layout = self.layout()
        text = gateway_toml(
            layout,
            PORTS,
            gateway_id="g",
            relay={"reconnect_max_delay": 5, "heartbeat_interval": 2},
            service={"drain_timeout": 3, "half_close_timeout": 4},
            metrics=None,
        )
        config = load_gateway_config(self.write(layout.gateway_config, text))
        self.assertEqual((config.relay.reconnect_cap, config.relay.heartbeat.interval), (5, 2))
        self.assertEqual((config.drain_timeout, config.half_close_timeout), (3, 4))
        self.assertIsNone(config.metrics_listen)
        removed = gateway_toml(layout, PORTS, gateway_id="g", access={"mode": None})
        self.assertEqual(tomllib.loads(removed)["access"], {})

    def test_without_a_metrics_port_there_is_no_metrics_listener(self) -> None:
        layout = self.layout()
        ports = Ports(1, 2, 3, 4, 5, None, 7)
        text = gateway_toml(layout, ports, gateway_id="g")
        config = load_gateway_config(self.write(layout.gateway_config, text))
        self.assertIsNone(config.metrics_listen)

    def test_odd_characters_in_paths_survive(self) -> None:
        layout = self.layout(pki='a "quoted" \\ folder')
        text = gateway_toml(layout, PORTS, gateway_id="g", relative=False)
        config = load_gateway_config(self.write(layout.gateway_config, text))
        self.assertEqual(config.relay.ca, layout.ca.resolve())

    def test_every_setting_is_explained_for_a_reader(self) -> None:
        text = gateway_toml(
            self.layout(), PORTS, gateway_id="demo-gateway", relay={"reconnect_max_delay": 5}
        )
        self.assertTrue(text.startswith("# gateway.toml written by"))
        self.assertIn("its subject is the id demo-gateway", text)
        self.assertIn('# proxy = "http://proxy.plant.local:3128"', text)
        self.assertIn("# the demo processor", text)
        for line in text.splitlines():
            if "=" in line and not line.startswith("#") and not line.startswith(("name", "key")):
                self.assertIn("# ", line, line)


class FilesTests(StackCase):
    def test_pki_gives_the_gateway_its_id_and_refuses_to_overwrite(self) -> None:
        layout = Layout(self.workdir(), pki=self.workdir() / "pki")
        make_pki(layout, "plant7-cell3", ca_name="Test CA")
        cert = x509.load_pem_x509_certificate(layout.gateway_cert.read_bytes())
        self.assertEqual(gateway_id_from_certificate(cert), "plant7-cell3")
        self.assertTrue(layout.relay_key.is_file() and layout.ca_key.is_file())
        self.assertEqual(layout.gateway_key.stat().st_mode & 0o777, 0o600)
        self.assertRaises(PKIError, make_pki, layout, "plant7-cell3", ca_name="Test CA")
        make_pki(layout, "other", ca_name="Test CA", force=True)

    def test_make_engineer_starts_the_token_file_afresh(self) -> None:
        tokens = self.workdir() / "engineers.toml"
        make_engineer(tokens, "erin")
        token = make_engineer(tokens, "erin")
        self.assertEqual(list(read_engineers(tokens)), ["erin"])
        self.assertTrue(token.startswith("rsg_"))


class CommandTests(SynchronousTestCase):
    def test_every_program_starts_as_python_m_gateway(self) -> None:
        argv = python_gateway(relay_args(Path("/w/relay.toml")))
        self.assertEqual(argv[1:], ["-m", "gateway", "relay", "-c", "/w/relay.toml"])
        self.assertEqual(run_args(Path("g.toml")), ["run", "-c", "g.toml"])
        listen = Address(LOOPBACK, 8000)
        self.assertEqual(processor_args(listen), ["demo-processor", "--listen", "127.0.0.1:8000"])

    def test_connect_takes_the_token_from_the_environment_unless_given(self) -> None:
        def args(token: str | None = None) -> list[str]:
            return connect_args(
                relay=Address(LOOPBACK, 9443),
                ca=Path("/w/ca.pem"),
                gateway_id="demo-gateway",
                listen=Address(LOOPBACK, 8080),
                token=token,
            )

        self.assertNotIn("--token", args())
        self.assertEqual(args()[args().index("--target") + 1], "web")
        self.assertEqual(args()[args().index("--listen") + 1], "127.0.0.1:8080")
        with_token = args("rsg_x")
        self.assertEqual(with_token[with_token.index("--token") + 1], "rsg_x")


class ProbeTests(SynchronousTestCase):
    def test_free_ports_are_distinct(self) -> None:
        ports = free_ports(10)
        self.assertEqual(len(set(ports)), 10)
        picked = Ports.pick(metrics=False)
        self.assertIsNone(picked.metrics)

    def test_listening_reads_a_listener_without_connecting(self) -> None:
        with socket.socket() as server:
            server.bind((LOOPBACK, 0))
            port = server.getsockname()[1]
            self.assertIn("nothing listens", listening(port) or "")
            server.listen()
            self.assertIsNone(listening(port))

    def test_tunnel_problem_says_what_is_missing(self) -> None:
        self.assertIsNone(tunnel_problem({"tunnel": {"state": "up"}}))
        self.assertEqual(
            tunnel_problem({"tunnel": {"state": "connecting", "last_error": "refused"}}),
            "tunnel is 'connecting': refused",
        )
        self.assertEqual(tunnel_problem([]), "the status JSON has no tunnel object")

    def test_log_tail_leaves_out_probe_lines(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
            f.write("".join(f"line {i}\n" for i in range(30)) + "GET / probe-agent\n")
        log = Path(f.name)
        self.addCleanup(log.unlink)
        self.assertEqual(log_tail(log, 2, without="probe-agent"), ["line 28", "line 29"])
        self.assertEqual(log_tail(log, 1), ["GET / probe-agent"])
        self.assertEqual(log_tail(log.with_name("missing.log")), [])
