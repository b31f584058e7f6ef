"""Give the root account's userpass identity the password of this checkout's configuration.

The Rucio database lives on the machine's PostgreSQL and outlives a checkout, while each checkout keeps its
own random password (``.services/rucio/etc/root.password``): a clean clone takes the account over here.
Runs in the server's virtual environment with RUCIO_CONFIG pointing at the server configuration.
"""

from __future__ import annotations

import hashlib
import os
import sys

from rucio.common.exception import IdentityError, IdentityNotFound
from rucio.core.identity import verify_identity
from rucio.db.sqla import models
from rucio.db.sqla.constants import IdentityType
from rucio.db.sqla.session import transactional_session
from sqlalchemy import update
from sqlalchemy.orm import Session


@transactional_session
def _set_password(identity: str, password: str, *, session: Session) -> None:
    salt = os.urandom(255)  # salted SHA-256, as rucio's own bootstrap stores it
    session.execute(
        update(models.Identity)
        .where(models.Identity.identity == identity, models.Identity.identity_type == IdentityType.USERPASS)
        .values(password=hashlib.sha256(salt + password.encode()).hexdigest(), salt=salt)
    )


def main() -> int:
    identity = "root"
    password = sys.stdin.read().strip()  # on stdin, never on a command line others can read
    try:
        verify_identity(identity, IdentityType.USERPASS, password)
        return 0
    except IdentityNotFound:
        _set_password(identity, password)
        print(f"rucio: the {identity} identity now has this checkout's password")
        return 0
    except IdentityError as exc:
        print(f"rucio: no userpass identity {identity!r} to update: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
