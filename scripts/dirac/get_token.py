"""Get a DiracX token for osa-grid through the legacy-exchange route; write the client's credentials file.

Run by start.sh with the server's venv: ``python get_token.py URL KEY_FILE CREDENTIALS USER SCOPE``. A real
site's users get their tokens from the VO's identity provider; this server has none, and the legacy exchange
(how DIRAC v9 services mint tokens for their users) is the one route that needs no browser.
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

import httpx
from diracx.core.models.auth import TokenResponse
from diracx.core.utils import write_credentials

# The refresh token lives a week, so a long campaign or demo never loses its credentials; start.sh renews it.
REFRESH_MINUTES = 7 * 24 * 60


def main(url: str, key_file: str, credentials: str, user: str, scope: str) -> int:
    key = base64.urlsafe_b64encode(Path(key_file).read_bytes().strip()).decode()
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.get(
                f"{url}/api/auth/legacy-exchange",
                params={"preferred_username": user, "scope": scope, "expires_minutes": REFRESH_MINUTES},
                headers={"Authorization": f"Bearer diracx:legacy:{key}"},
                timeout=30,
            )
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                print(f"legacy exchange: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
            continue
        if response.status_code == 200:
            break
        print(f"legacy exchange refused: HTTP {response.status_code}: {response.text[:500]}", file=sys.stderr)
        return 1
    write_credentials(TokenResponse.model_validate(response.json()), location=Path(credentials))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
