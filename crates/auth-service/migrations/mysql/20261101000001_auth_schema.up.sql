CREATE TABLE users (
    id                  VARCHAR(36) NOT NULL PRIMARY KEY,
    username            VARCHAR(64) NOT NULL,
    email               VARCHAR(254) NOT NULL,
    full_name           VARCHAR(200) NOT NULL DEFAULT '',
    password_hash       VARCHAR(255) NOT NULL,
    is_active           BIGINT NOT NULL DEFAULT 1,
    is_superuser        BIGINT NOT NULL DEFAULT 0,
    token_version       BIGINT NOT NULL DEFAULT 0,
    last_login_at       BIGINT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE KEY uq_users_username (username),
    UNIQUE KEY uq_users_email (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE roles (
    id           VARCHAR(36) NOT NULL PRIMARY KEY,
    name         VARCHAR(64) NOT NULL,
    description  VARCHAR(500) NOT NULL DEFAULT '',
    is_system    BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE KEY uq_roles_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE permissions (
    code         VARCHAR(64) NOT NULL PRIMARY KEY,
    description  VARCHAR(500) NOT NULL DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE user_roles (
    user_id  VARCHAR(36) NOT NULL,
    role_id  VARCHAR(36) NOT NULL,
    PRIMARY KEY (user_id, role_id),
    CONSTRAINT fk_user_roles_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT fk_user_roles_role FOREIGN KEY (role_id) REFERENCES roles (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE role_permissions (
    role_id          VARCHAR(36) NOT NULL,
    permission_code  VARCHAR(64) NOT NULL,
    PRIMARY KEY (role_id, permission_code),
    CONSTRAINT fk_role_permissions_role FOREIGN KEY (role_id) REFERENCES roles (id) ON DELETE CASCADE,
    CONSTRAINT fk_role_permissions_permission FOREIGN KEY (permission_code) REFERENCES permissions (code) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE refresh_tokens (
    id          VARCHAR(36) NOT NULL PRIMARY KEY,
    family_id   VARCHAR(36) NOT NULL,
    user_id     VARCHAR(36) NOT NULL,
    token_hash  CHAR(64) NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT NULL,
    revoked_at  BIGINT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE KEY uq_refresh_tokens_hash (token_hash),
    KEY idx_refresh_tokens_family (family_id),
    KEY idx_refresh_tokens_user (user_id),
    CONSTRAINT fk_refresh_tokens_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE audit_log (
    id              BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at              BIGINT NOT NULL,
    actor_id        VARCHAR(36) NULL,
    actor_username  VARCHAR(254) NULL,
    action          VARCHAR(64) NOT NULL,
    target          VARCHAR(255) NULL,
    outcome         VARCHAR(16) NOT NULL,
    client_ip       VARCHAR(64) NULL,
    user_agent      VARCHAR(255) NULL,
    request_id      VARCHAR(128) NULL,
    details         TEXT NULL,
    KEY idx_audit_log_at (at),
    KEY idx_audit_log_action (action)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
