"""Create (or check) the RSEs, distances, scope and account limits of the local Rucio server.

Run by start.sh with the server's venv and the client configuration; idempotent: what exists is left alone,
what differs is set again.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from rucio.client import Client
from rucio.common.exception import Duplicate, RSENotFound, RSEProtocolNotSupported

ACCOUNT = "root"
SCOPES = ("lst",)
LIMIT_BYTES = 10 * 1000**4  # 10 TB each: the limits exist (as on a site), they never bite a test
# name -> (type, directory under the RSE root, extra attributes)
RSES = {
    "LST_ONSITE": ("DISK", "onsite", {}),
    "LST_TAPE": ("TAPE", "tape", {"staging_required": True}),
    # The processing cache: staged inputs live here while their tasks need them; the reaper may clean it.
    "LST_CACHE": ("DISK", "cache", {"greedyDeletion": True}),
    "LST_DL3": ("DISK", "dl3", {}),
}


def protocol(prefix: Path) -> dict[str, object]:
    return {
        "scheme": "file",
        "hostname": "localhost",
        "port": 0,
        "prefix": f"{prefix}/",
        "impl": "rucio.rse.protocols.posix.Default",
        "domains": {
            "lan": {"read": 1, "write": 1, "delete": 1},
            "wan": {
                "read": 1,
                "write": 1,
                "delete": 1,
                "third_party_copy_read": 1,
                "third_party_copy_write": 1,
            },
        },
    }


def main(root: Path) -> None:
    client = Client()
    for name, (rse_type, directory, attributes) in RSES.items():
        prefix = root / directory
        prefix.mkdir(parents=True, exist_ok=True)
        try:
            client.get_rse(name)
        except RSENotFound:
            client.add_rse(name, rse_type=rse_type, deterministic=True, volatile=False)
        if not _has_protocols(client, name):
            client.add_protocol(name, protocol(prefix))
        wanted = {"site": "LST", "osa_grid": True, "lfn2pfn_algorithm": "hash", **attributes}
        current = client.list_rse_attributes(name)
        for key, value in wanted.items():
            if current.get(key) != value:
                client.add_rse_attribute(name, key, value)
        client.set_local_account_limit(ACCOUNT, name, LIMIT_BYTES)
    for source in RSES:
        for destination in RSES:
            if source == destination:
                continue
            with contextlib.suppress(Duplicate):
                client.add_distance(source, destination, {"distance": 1})
    existing = set(client.list_scopes())
    for scope in SCOPES:
        if scope not in existing:
            client.add_scope(ACCOUNT, scope)
    print("rucio: RSEs " + ", ".join(RSES) + f" under {root}", file=sys.stderr)


def _has_protocols(client: Client, name: str) -> bool:
    try:
        return bool(client.get_protocols(name, scheme="file").get("protocols"))
    except RSEProtocolNotSupported:
        return False


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
