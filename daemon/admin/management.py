"""RabbitMQ's management HTTP API: the broker side of agent identities.

An agent is a broker user with no tags and these permissions on the
scheduler's vhost, and nothing else (each checked with real clients in
``tests/test_agents_identity.py``):

* configure ``^aiosd\\.reply\\.<name>\\..*``: declare (and delete) its own reply queues;
* write ``^aiosd\\.ingress$``: publish syscalls; no other exchange, not even the default one;
* read ``^aiosd\\.reply\\.<name>\\..*``: consume its own reply queues.

It cannot bind a queue to ``aiosd.ingress`` (that needs read on the
exchange), so it cannot see other agents' syscalls. RabbitMQ itself refuses a
``user_id`` property that is not the connection's user (no ``impersonator`` tag).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from aiosd.daemon.errors import AgentExists, BrokerAdminError
from aiosd.sdk.protocol import INGRESS_EXCHANGE, REPLY_QUEUE_PREFIX
from aiosd.sdk.tasks import TASK_QUEUE


def agent_permissions(name: str, runner: bool = False) -> dict[str, str]:
    """The least-privilege permissions of agent ``name`` (a task runner also consumes the task queue)."""
    replies = "^" + re.escape(f"{REPLY_QUEUE_PREFIX}{name}.") + ".*"
    own = f"^({re.escape(f'{REPLY_QUEUE_PREFIX}{name}.')}.*|{re.escape(TASK_QUEUE)})$" if runner else replies
    return {"configure": own, "write": "^" + re.escape(INGRESS_EXCHANGE) + "$", "read": own}


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names (``/`` when it names none)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def agent_url(amqp_url: str, name: str, password: str) -> str:
    """``amqp_url`` with the agent's credentials instead of the scheduler's."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "localhost"
    netloc = f"{quote(name, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


class BrokerAdmin:
    """A thin client of the management API for one vhost."""

    def __init__(self, url: str, user: str, password: str, vhost: str, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._vhost = vhost
        self._http = httpx.Client(base_url=f"{self._url}/api", auth=(user, password), timeout=timeout)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def user_exists(self, name: str) -> bool:
        """Whether a broker user ``name`` exists."""
        return self._call("GET", f"/users/{quote(name, safe='')}", allow=(404,)).status_code == 200

    def create_agent_user(self, name: str, password: str, runner: bool = False) -> None:
        """Create broker user ``name`` (no tags) with the agent permissions; refuse an existing user."""
        if self.user_exists(name):
            raise AgentExists(f"broker user {name!r} already exists; pick another name or add it with --external")
        self.set_password(name, password)
        self._call(
            "PUT",
            f"/permissions/{quote(self._vhost, safe='')}/{quote(name, safe='')}",
            json=agent_permissions(name, runner),
        )

    def set_password(self, name: str, password: str) -> None:
        """Create or update user ``name`` with ``password`` and no tags (tags would add powers)."""
        self._call("PUT", f"/users/{quote(name, safe='')}", json={"password": password, "tags": ""})

    def delete_user(self, name: str) -> None:
        """Delete broker user ``name`` (RabbitMQ closes its connections); no error if absent."""
        self._call("DELETE", f"/users/{quote(name, safe='')}", allow=(404,))

    def close_connections(self, name: str, reason: str) -> int:
        """Close every open connection of user ``name``; return how many."""
        path = f"/connections/username/{quote(name, safe='')}"
        conns = self._call("GET", path, allow=(404,))
        found: list[dict[str, Any]] = conns.json() if conns.status_code == 200 else []
        if found:
            self._call("DELETE", path, headers={"X-Reason": reason}, allow=(404,))
        return len(found)

    def permissions(self, name: str) -> dict[str, str] | None:
        """The user's permissions on the vhost, or ``None``."""
        r = self._call("GET", f"/permissions/{quote(self._vhost, safe='')}/{quote(name, safe='')}", allow=(404,))
        if r.status_code == 404:
            return None
        return {k: str(v) for k, v in r.json().items() if k in ("configure", "write", "read")}

    def _call(self, method: str, path: str, allow: tuple[int, ...] = (), **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise BrokerAdminError(f"RabbitMQ management API unreachable at {self._url}: {exc}") from exc
        if r.status_code in (401, 403):
            raise BrokerAdminError(
                f"RabbitMQ management API at {self._url} refused the admin credentials ({r.status_code})"
            )
        if r.status_code >= 400 and r.status_code not in allow:
            raise BrokerAdminError(
                f"RabbitMQ management API: {method} {path} failed with {r.status_code}: {r.text[:200]}"
            )
        return r
