DROP TABLE audit_log;
DROP TABLE refresh_tokens;
DROP TABLE role_permissions;
DROP TABLE user_roles;
DROP TABLE permissions;
DROP TABLE roles;
DROP TABLE users;
