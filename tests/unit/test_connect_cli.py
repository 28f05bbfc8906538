# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""``gateway connect --reason | --code`` mistakes: exit 2 with one line, before anything is dialled.

The relay named here is a port nothing listens on: a run that got as far as dialling would say
"cannot reach relay" and keep trying (and hit the timeout) instead of exiting 2.
"""

from __future__ import annotations

from tests.helpers.processes import free_port
from tests.unit.test_cli import CommandLineTestCase


class AttendedFlagTests(CommandLineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = str(self.make_pki().ca_cert)

    def connect(self, *extra: str) -> list[str]:
        return [
            "connect",
            "--relay",
            f"127.0.0.1:{free_port()}",
            "--ca",
            self.ca,
            "--gateway",
            "plant7",
            "--target",
            "web",
            "--listen",
            f"127.0.0.1:{free_port()}",
            *extra,
        ]

    def test_a_code_with_letters_or_not_six_digits_exits_2(self) -> None:
        for code in ("12345a", "12345", "1234567", "", "١٢٣٤٥٦"):
            with self.subTest(code=code):
                result = self.gateway(*self.connect("--code", code), env={"GATEWAY_TOKEN": "x"})
                self.assertOneLineError(result, "--code", "6 digits")

    def test_reason_and_code_together_exit_2(self) -> None:
        args = self.connect("--reason", "ticket 4711", "--code", "123456")
        result = self.gateway(*args, env={"GATEWAY_TOKEN": "x"})
        self.assertUsageError(result, "--code", "not allowed with argument --reason")

    def test_an_empty_or_overlong_reason_exits_2(self) -> None:
        for reason, words in (("  ", "words the plant can judge"), ("x" * 501, "at most 500")):
            with self.subTest(reason=reason[:5]):
                result = self.gateway(*self.connect("--reason", reason), env={"GATEWAY_TOKEN": "x"})
                self.assertOneLineError(result, "--reason", words)
