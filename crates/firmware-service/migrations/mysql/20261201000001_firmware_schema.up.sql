CREATE TABLE firmware (
    id             VARCHAR(64) NOT NULL PRIMARY KEY,
    name           VARCHAR(200) NOT NULL,
    device_type    VARCHAR(64) NOT NULL,
    version        VARCHAR(64) NOT NULL,
    release_notes  TEXT NOT NULL,
    size           BIGINT NOT NULL,
    sha256         CHAR(64) NOT NULL,
    signature      VARCHAR(200) NULL,
    storage_key    VARCHAR(64) NOT NULL,
    created_by     VARCHAR(36) NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE KEY uq_firmware_type_version (device_type, version),
    KEY idx_firmware_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE rollouts (
    id                         VARCHAR(64) NOT NULL PRIMARY KEY,
    kind                       VARCHAR(16) NOT NULL,
    name                       VARCHAR(200) NOT NULL,
    firmware_id                VARCHAR(64) NOT NULL,
    firmware_version           VARCHAR(64) NOT NULL,
    device_type                VARCHAR(64) NOT NULL,
    state                      VARCHAR(16) NOT NULL,
    target                     MEDIUMTEXT NOT NULL,
    rate_per_minute            BIGINT NOT NULL,
    failure_threshold_percent  DOUBLE NOT NULL,
    min_finished               BIGINT NOT NULL,
    timeout_secs               BIGINT NOT NULL,
    max_retries                BIGINT NOT NULL,
    retry_backoff_secs         BIGINT NOT NULL,
    start_at                   BIGINT NOT NULL,
    next_slot_at               BIGINT NOT NULL DEFAULT 0,
    reason                     VARCHAR(500) NULL,
    created_by                 VARCHAR(36) NOT NULL,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL,
    started_at                 BIGINT NULL,
    finished_at                BIGINT NULL,
    KEY idx_rollouts_state (state, start_at),
    KEY idx_rollouts_firmware (firmware_id),
    KEY idx_rollouts_kind (kind, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE firmware_upgrade_tasks (
    id                VARCHAR(64) NOT NULL PRIMARY KEY,
    rollout_id        VARCHAR(64) NOT NULL,
    device_id         VARCHAR(128) NOT NULL,
    state             VARCHAR(16) NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    progress          DOUBLE NULL,
    error             VARCHAR(600) NULL,
    reported_version  VARCHAR(64) NULL,
    next_attempt_at   BIGINT NOT NULL,
    deadline_at       BIGINT NULL,
    lease_owner       VARCHAR(128) NULL,
    lease_token       VARCHAR(64) NULL,
    lease_until       BIGINT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    finished_at       BIGINT NULL,
    UNIQUE KEY uq_tasks_rollout_device (rollout_id, device_id),
    KEY idx_tasks_rollout_state (rollout_id, state, next_attempt_at),
    KEY idx_tasks_deadline (state, deadline_at),
    KEY idx_tasks_device (device_id, state),
    KEY idx_tasks_lease (lease_token),
    CONSTRAINT fk_tasks_rollout FOREIGN KEY (rollout_id) REFERENCES rollouts (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE firmware_upgrade_task_history (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_id     VARCHAR(64) NOT NULL,
    at          BIGINT NOT NULL,
    from_state  VARCHAR(16) NOT NULL,
    to_state    VARCHAR(16) NOT NULL,
    attempt     BIGINT NOT NULL,
    actor       VARCHAR(160) NOT NULL,
    detail      VARCHAR(600) NULL,
    KEY idx_task_history_task (task_id, id),
    CONSTRAINT fk_task_history_task FOREIGN KEY (task_id) REFERENCES firmware_upgrade_tasks (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE firmware_settings (
    name   VARCHAR(64) NOT NULL PRIMARY KEY,
    value  TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
