"""Who is primary: the Leaser and Lease interfaces, and the static leaser.

A Lease is held by the primary. Its `valid_until` is a deadline on the monotonic clock, taken
from the moment the last successful renewal was *sent* plus the TTL minus a safety margin, so a
primary can stop accepting writes before any other node could have acquired the lease. The
leasers are used from the node's lease thread only; they are not required to be thread-safe.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from litefs.errors import LitefsError


class LeaseError(LitefsError):
    pass


class PrimaryExistsError(LeaseError):
    """Another node holds the lease."""


class LeaseExpiredError(LeaseError):
    """The lease can no longer be renewed: this node must stop being primary."""


@dataclass(frozen=True)
class PrimaryInfo:
    hostname: str
    advertise_url: str

    def to_json(self) -> dict[str, str]:
        return {"hostname": self.hostname, "advertise-url": self.advertise_url}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> "PrimaryInfo":
        return cls(str(data.get("hostname", "")), str(data.get("advertise-url", "")))


class Lease(Protocol):
    id: str
    ttl: float

    @property
    def valid_until(self) -> float:
        """Monotonic deadline after which this node must not act as primary."""

    def renew(self) -> None:
        """Extend the lease; raises LeaseExpiredError if it is gone."""

    def handoff(self) -> str:
        """Give up the lease without destroying it; returns the id a successor acquires."""

    def close(self) -> None:
        """Release the lease so another candidate can take over at once."""


class Leaser(Protocol):
    type: str
    hostname: str
    advertise_url: str
    candidate: bool

    def acquire(self) -> Lease:
        """Become primary; raises PrimaryExistsError if another node is."""

    def acquire_existing(self, lease_id: str) -> Lease:
        """Take over a lease handed off by the current primary."""

    def primary_info(self) -> PrimaryInfo | None:
        """The current primary, or None when there is none."""

    def cluster_id(self) -> str:
        """The cluster id stored with the lease ("" when none or not supported)."""

    def set_cluster_id(self, cluster_id: str) -> None: ...

    def close(self) -> None: ...


class StaticLease:
    id = "static"
    ttl = math.inf

    @property
    def valid_until(self) -> float:
        return math.inf

    def renew(self) -> None:
        pass

    def handoff(self) -> str:
        raise LeaseError("the static lease cannot be handed off")

    def close(self) -> None:
        pass


class StaticLeaser:
    """One fixed primary. On the primary `candidate` is true; on replicas `hostname` and
    `advertise_url` describe the primary (as upstream LiteFS's static lease)."""

    type = "static"

    def __init__(self, hostname: str, advertise_url: str, candidate: bool) -> None:
        self.hostname = hostname
        self.advertise_url = advertise_url
        self.candidate = candidate

    def acquire(self) -> Lease:
        if not self.candidate:
            raise PrimaryExistsError("not the static primary")
        return StaticLease()

    def acquire_existing(self, lease_id: str) -> Lease:
        raise LeaseError("the static lease cannot be handed off")

    def primary_info(self) -> PrimaryInfo | None:
        return PrimaryInfo(self.hostname, self.advertise_url)

    def cluster_id(self) -> str:
        return ""

    def set_cluster_id(self, cluster_id: str) -> None:
        pass

    def close(self) -> None:
        pass


def monotonic() -> float:
    return time.monotonic()
