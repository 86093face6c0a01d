"""Alembic migrations of the job store, run programmatically when the store opens.

`upgrade(engine)` brings the schema to the newest revision. There is no `alembic.ini`: the
configuration is built here, so an installed vipe migrates without files outside the package.
A new revision goes into `versions/` (`alembic revision` with `script_location` pointing here,
or by hand: one module with `revision`, `down_revision`, `upgrade()` and `downgrade()`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


def config() -> Config:
    """An Alembic `Config` whose scripts are this folder."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the store behind `engine` to `revision` (default: the newest)."""
    from alembic import command

    cfg = config()
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:  # its plug-in chatter is noise at every start
        alembic_log.setLevel(logging.WARNING)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
    log.info("job store schema at %s", revision)
