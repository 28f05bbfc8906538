"""Who is logged in to the portal, and which target origins they were let into.

Three kinds of secret, each random 256 bits and each held only in memory (a relay restart logs
everyone out, which is the safe side):

* a **login**: the portal origin's session cookie, with its CSRF token for the forms;
* a **ticket**: one-time and valid `TICKET_SECONDS`, carried in the URL of the redirect from the
  portal to a target's origin (where the portal's cookie cannot be read);
* an **origin pass**: what the ticket is exchanged for, the target origin's own host-only cookie,
  good for that one (gateway, target) and only while its login lasts.

So no target origin ever holds a credential that works on the portal or on another target.
"""

from __future__ import annotations

import hmac
import secrets

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

TICKET_SECONDS = 60.0


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@define(eq=False)
class Login:
    id: str
    engineer: str
    csrf: str
    started: float
    expires: float
    passes: set[str] = field(factory=set)
    """The origin passes made from this login (ended with it)."""

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf, token)


@define(frozen=True)
class Pass:
    login: str
    gateway: str
    target: str


class PortalLogins:
    def __init__(self, clock: IReactorTime, lifetime: float) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self._logins: dict[str, Login] = {}
        self._tickets: dict[str, tuple[Pass, float]] = {}
        self._passes: dict[str, Pass] = {}

    def create(self, engineer: str) -> Login:
        now = self._clock.seconds()
        login = Login(new_secret(), engineer, new_secret(), now, now + self.lifetime)
        self._logins[login.id] = login
        return login

    def get(self, login_id: str | None) -> Login | None:
        if not login_id:
            return None
        login = self._logins.get(login_id)
        if login is None:
            return None
        if self._clock.seconds() >= login.expires:
            self.end(login_id)
            return None
        return login

    def end(self, login_id: str) -> Login | None:
        login = self._logins.pop(login_id, None)
        if login is not None:
            for token in login.passes:
                self._passes.pop(token, None)
        return login

    def logins_of(self, engineer: str) -> list[Login]:
        return [x for x in self._logins.values() if x.engineer.casefold() == engineer.casefold()]

    def ticket(self, login: Login, gateway: str, target: str) -> str:
        now = self._clock.seconds()
        for key, (_, until) in list(self._tickets.items()):
            if until <= now:
                del self._tickets[key]
        token = new_secret()
        self._tickets[token] = (Pass(login.id, gateway, target), now + TICKET_SECONDS)
        return token

    def redeem(self, ticket: str, gateway: str, target: str) -> str | None:
        """A ticket (once, in time, for this very origin) exchanged for an origin pass."""
        found = self._tickets.pop(ticket, None)
        if found is None:
            return None
        grant, until = found
        if until <= self._clock.seconds() or (grant.gateway, grant.target) != (gateway, target):
            return None
        login = self.get(grant.login)
        if login is None:
            return None
        token = new_secret()
        self._passes[token] = grant
        login.passes.add(token)
        return token

    def by_pass(self, token: str | None, gateway: str, target: str) -> Login | None:
        """The login an origin pass belongs to, if it is for this origin and still live."""
        if not token:
            return None
        grant = self._passes.get(token)
        if grant is None or (grant.gateway, grant.target) != (gateway, target):
            return None
        return self.get(grant.login)
