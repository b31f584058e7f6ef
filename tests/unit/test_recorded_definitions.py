"""Productions as the catalog records them: secrets written inline hidden, everything else as it was."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import cast

from osa_grid.core.loading import build_production, parse_yaml
from osa_grid.core.models import Production, Transformation
from osa_grid.core.redaction import HIDDEN, redact_source
from osa_grid.services.productions import (
    definition_of,
    digest_of,
    hides_secrets,
    production_from_definition,
    source_to_record,
)
from osa_grid.services.shepherd import Shepherd
from tests.helpers import production_from_yaml

SECRET_YAML = """\
name: secret
description: "calibration DB at https://op:pw-desc-5715@calib.example.org/db"
parameters: {api_token: tok-param-5714, night_dir: "20260101"}
transformations:
  - name: echo
    input: {query: data_level = R0}
    step:
      argv: [prog, --password=pw-arg-5713, --token, tok-arg-5717, "{api_token}", "{input}", "{output.o}"]
      env: {DB_PASSWORD: pw-env-5711, THREADS: "2"}
    outputs: [{name: o, file_name: "o_{run_id}.txt", metadata: {data_level: E}}]
"""
SECRETS = ["pw-desc-5715", "tok-param-5714", "pw-arg-5713", "tok-arg-5717", "pw-env-5711"]


def load(text: str = SECRET_YAML) -> Production:
    return build_production(parse_yaml(text, "secret.yaml"))


def test_the_recorded_definition_hides_inline_secrets_and_still_loads() -> None:
    production = load()
    recorded = definition_of(production)
    text = json.dumps(recorded)
    assert not [secret for secret in SECRETS if secret in text]
    step = recorded["transformations"][0]["step"]
    assert step["argv"] == [
        "prog",
        "--password=***",
        "--token",
        "***",
        "{api_token}",
        "{input}",
        "{output.o}",
    ]
    assert step["env"] == {"DB_PASSWORD": HIDDEN, "THREADS": "2"}
    assert recorded["parameters"] == {"api_token": HIDDEN, "night_dir": "20260101"}
    assert recorded["transformations"][0]["input"] == {"query": "data_level = R0", "from": [], "needs": {}}
    assert hides_secrets(production)
    # What production status and retry read back from the catalog.
    assert production_from_definition(recorded).transformations[0].name == "echo"
    # The step still runs with the real values: the Production itself is untouched.
    assert production.transformations[0].step.env["DB_PASSWORD"] == "pw-env-5711"


def test_a_production_without_secrets_is_recorded_and_digested_as_before() -> None:
    production = production_from_yaml()
    assert not hides_secrets(production)
    assert definition_of(production) == production.model_dump(mode="json", by_alias=True)
    before = hashlib.sha256(
        json.dumps(production.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
    ).hexdigest()
    assert digest_of(production) == before


def test_the_digests_do_not_depend_on_the_secrets() -> None:
    """A digest of the secrets too would let anyone holding the recorded definition test guesses of them."""
    other = load(SECRET_YAML.replace("pw-env-5711", "another-password"))
    assert digest_of(load()) == digest_of(other)
    first, second = load().transformations[0], other.transformations[0]
    assert config_digest(first) == config_digest(second)
    plain = production_from_yaml().transformations[0]
    assert config_digest(plain) == hashlib.sha256(plain.model_dump_json().encode()).hexdigest()  # as before


def config_digest(transformation: Transformation) -> str:
    """The digest the shepherd records in each task's provenance."""
    return Shepherd._config_digest(cast(Shepherd, SimpleNamespace(_digests={})), transformation)


def test_the_recorded_file_text_hides_the_same_values() -> None:
    production = load()
    recorded = source_to_record(SECRET_YAML, production, set())
    assert recorded is not None
    assert not [secret for secret in SECRETS if secret in recorded]
    assert 'env: {DB_PASSWORD: ***, THREADS: "2"}' in recorded
    assert "tok-param-5714" in SECRET_YAML and "api_token: ***" in recorded


def test_the_file_text_is_not_kept_when_a_secret_cannot_be_hidden_in_it() -> None:
    # Written with an escape in one place, verbatim in another: replacing the verbatim one is not enough.
    escaped = SECRET_YAML.replace('"2"}', '"2", DB_PASSWORD_COPY: "pw-env-571\\x31"}')
    assert redact_source(escaped, {"pw-env-5711"}) is None
    # Too short to hide without hiding pieces of everything else.
    assert redact_source("name: x\npassword: abc\n", {"abc"}) is None
    assert redact_source("name: x\n", set()) == "name: x\n"
