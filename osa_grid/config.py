"""Settings: one object from ``OSA_GRID_*`` environment variables and an optional TOML file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from osa_grid.core.outages import DIRAC, RUCIO
from osa_grid.core.stepenv import check_names
from osa_grid.errors import BadInput

CONFIG_FILE_NAME = "osa-grid.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OSA_GRID_", extra="forbid")

    # Everything osa-grid writes by default lives under home: catalog, products, task work directories.
    home: Path = Path(".osa-grid")
    catalog_url: str | None = None
    data_root: Path | None = None
    work_root: Path | None = None
    backend: str = "local"
    data_manager: str = "local"
    max_cores: int | None = Field(None, ge=1)
    max_memory_gb: float | None = Field(None, gt=0)
    poll_interval: float = Field(2.0, gt=0)
    # Onsite nightly mode: the site's base directory (R0/, DL1/, monitoring/, running_analysis/, web/ ...).
    base_dir: Path | None = None
    # How operators are told: "log", "smtp://host:port?to=a@site", or an http(s):// webhook URL.
    notify: str = "log"
    lease_seconds: float = Field(120.0, gt=0)
    # Variables every step takes from the environment where it runs, beyond the safe base of core/stepenv.py
    # (exact names, or NAME* patterns): what this site's jobs need, e.g. ["http_proxy", "https_proxy"].
    step_env_passthrough: list[str] = Field(default_factory=list)
    # The SLURM backend (docs/slurm.md). slurm_conf is given to sbatch/squeue/sacct/scancel as SLURM_CONF.
    slurm_conf: Path | None = None
    slurm_bin_dir: Path | None = None
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_sbatch_args: list[str] = Field(default_factory=list)
    slurm_array_throttle: int = Field(100, ge=0)  # elements of one array running at once; 0: no limit
    slurm_max_jobs: int = Field(2000, ge=1)  # jobs queued or running at once
    slurm_poll_seconds: float = Field(5.0, ge=0)  # at most one squeue + sacct per this many seconds
    slurm_lost_after_seconds: float = Field(300.0, ge=0)  # unknown to squeue and sacct this long: lost
    slurm_python: str | None = None  # runs the job runner on the nodes; default: this Python
    # The Rucio data manager (docs/rucio.md), with data_manager = "rucio". rucio_config: the client
    # configuration file (default: RUCIO_CONFIG); rucio_url/rucio_account override its host and account.
    rucio_config: Path | None = None
    rucio_url: str | None = None
    rucio_auth_url: str | None = None
    rucio_account: str | None = None
    rucio_scope: str = "lst"
    rucio_tape_rse: str = "LST_TAPE"
    rucio_cache_rse: str = "LST_CACHE"
    rucio_output_rse: str = "LST_DL3"
    rucio_output_levels: list[str] = Field(default_factory=lambda: ["DL3"])  # uploaded to rucio_output_rse
    rucio_stage_lifetime: int = Field(7 * 86400, ge=60)  # seconds a staging rule lives unless released
    # Seconds a service may stay unreached before the operator is told (once per outage; docs/rucio.md).
    rucio_outage_alert_after: float = Field(900.0, ge=0)
    staging_window_files: int = Field(1000, ge=1)  # files staged and not yet released, at most
    staging_window_bytes: int = Field(10 * 1000**4, ge=1)
    # The DIRAC backend (docs/dirac.md); unset URL/credentials: DIRACX_URL / DIRACX_CREDENTIALS_PATH.
    dirac_url: str | None = None
    dirac_credentials_path: Path | None = None
    dirac_batch_size: int = Field(20, ge=1, le=20)  # jobs per bulk submission (DiracX takes 20 at most)
    dirac_max_jobs: int = Field(2000, ge=1)  # jobs queued or running at once
    dirac_poll_seconds: float = Field(5.0, ge=0)  # at most one search per JobGroup per this many seconds
    dirac_lost_after_seconds: float = Field(300.0, ge=0)  # a job DiracX does not know this long: lost
    dirac_outage_alert_after: float = Field(900.0, ge=0)  # seconds unreached before the operator is told

    @field_validator(
        "home",
        "data_root",
        "work_root",
        "slurm_conf",
        "slurm_bin_dir",
        "base_dir",
        "dirac_credentials_path",
        "rucio_config",
    )
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("step_env_passthrough")
    @classmethod
    def _passthrough_names(cls, names: list[str]) -> list[str]:
        return check_names(names)

    @property
    def catalog(self) -> str:
        return self.catalog_url or f"sqlite:///{(self.home / 'catalog.sqlite').resolve()}"

    @property
    def outage_alert_after(self) -> dict[str, float]:
        """Per watched service (osa_grid.core.outages): seconds unreached before the operator is told."""
        return {RUCIO: self.rucio_outage_alert_after, DIRAC: self.dirac_outage_alert_after}

    @property
    def data_directory(self) -> Path:
        return (self.data_root or self.home / "data").resolve()

    @property
    def work_directory(self) -> Path:
        return (self.work_root or self.home / "work").resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from (lowest first) the TOML file, the environment, and explicit overrides."""
    path = config_file or _default_config_file()
    from_file: dict[str, Any] = {}
    if path is not None:
        try:
            from_file = tomllib.loads(path.read_text())
        except OSError as exc:
            raise BadInput(f"cannot read the configuration file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"{path}: not valid TOML: {exc}") from exc
        from_file = from_file.get("osa-grid", from_file)
    env_names = {name for name in Settings.model_fields if f"OSA_GRID_{name.upper()}" in os.environ}
    merged = {k: v for k, v in from_file.items() if k not in env_names}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        where = f" (from {path})" if path else ""
        raise BadInput(f"invalid settings{where}: {problems}") from exc


def _default_config_file() -> Path | None:
    explicit = os.environ.get("OSA_GRID_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path(CONFIG_FILE_NAME)
    return local if local.is_file() else None
