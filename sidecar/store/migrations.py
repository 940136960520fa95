"""Versioned schema migrations, shared by every backend. Append new ones; never edit an applied one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: str
    postgres: str


_INITIAL_COMMON = """
CREATE TABLE config_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

CREATE TABLE self_hosted_models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    family TEXT NOT NULL,
    platform TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    identifier TEXT NOT NULL,
    api_token_key_id TEXT,
    api_token_ciphertext {blob},
    create_time {time} NOT NULL,
    update_time {time} NOT NULL
);

CREATE TABLE feature_settings (
    feature TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    self_hosted_model_id TEXT REFERENCES self_hosted_models (id),
    update_time {time} NOT NULL
);

CREATE TABLE instance_model_selections (
    feature TEXT PRIMARY KEY,
    offered_model_ref TEXT NOT NULL,
    update_time {time} NOT NULL
);

CREATE TABLE namespace_model_selections (
    namespace_id BIGINT NOT NULL,
    feature TEXT NOT NULL,
    offered_model_ref TEXT NOT NULL,
    update_time {time} NOT NULL,
    PRIMARY KEY (namespace_id, feature)
);

CREATE TABLE seat_assignments (
    user_id BIGINT NOT NULL,
    namespace_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, namespace_id)
){without_rowid};
CREATE INDEX seat_assignments_by_namespace ON seat_assignments (namespace_id, user_id);

CREATE TABLE user_default_namespaces (
    user_id BIGINT PRIMARY KEY,
    namespace_id BIGINT NOT NULL,
    update_time {time} NOT NULL
);

CREATE TABLE audit_events (
    id {serial} PRIMARY KEY,
    time {time} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    before_json TEXT NOT NULL,
    after_json TEXT NOT NULL,
    config_version BIGINT NOT NULL
);
CREATE INDEX audit_events_by_resource ON audit_events (resource, id);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        sqlite=_INITIAL_COMMON.format(blob="BLOB", time="TEXT", serial="INTEGER", without_rowid=" WITHOUT ROWID"),
        postgres=_INITIAL_COMMON.format(blob="BYTEA", time="TIMESTAMPTZ", serial="BIGSERIAL", without_rowid=""),
    ),
)

_CHANGE_LOG_INDEX = "CREATE INDEX audit_events_by_config_version ON audit_events (config_version);"
MIGRATIONS += (
    # Sidecars sharing a database replay the audit log from their last version: keep that read indexed.
    Migration(2, "index audit events by config version", sqlite=_CHANGE_LOG_INDEX, postgres=_CHANGE_LOG_INDEX),
)

_CHANGE_RECORDS = """
CREATE TABLE config_changes (
    version BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    keys_json TEXT NOT NULL,
    user_ids_json TEXT NOT NULL
);
"""
MIGRATIONS += (
    # The typed change record of every committed version, written in the same transaction: what followers apply.
    Migration(3, "typed change records", sqlite=_CHANGE_RECORDS, postgres=_CHANGE_RECORDS),
)

_INSTANCE_SETTINGS = """
CREATE TABLE instance_settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    deployment_type TEXT NOT NULL
);
"""
MIGRATIONS += (
    # The deployment type the database serves (instance.deployment_type), recorded by the first sidecar that starts
    # on it: each type has settings of its own, so a sidecar configured for another type refuses to start. Empty
    # until then (databases created before this migration too).
    Migration(4, "instance settings: deployment type", sqlite=_INSTANCE_SETTINGS, postgres=_INSTANCE_SETTINGS),
)

_MODEL_ALLOWLISTS = """
CREATE TABLE model_allowlists (
    namespace_id BIGINT NOT NULL,
    feature TEXT NOT NULL,
    model_refs_json TEXT NOT NULL,
    update_time {time} NOT NULL,
    PRIMARY KEY (namespace_id, feature)
);
"""
MIGRATIONS += (
    # User model selection: the models users may choose from, per scope (namespace_id 0: the instance) and
    # user-selectable feature. A row exists while the allowlist is on; turning it off deletes the row.
    Migration(
        5,
        "model allowlists",
        sqlite=_MODEL_ALLOWLISTS.format(time="TEXT"),
        postgres=_MODEL_ALLOWLISTS.format(time="TIMESTAMPTZ"),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
