INSERT INTO permissions (code, description) VALUES
    ('device:read', 'View devices, their telemetry, status and command history'),
    ('device:write', 'Create, update and delete devices and rotate their credentials'),
    ('device:command', 'Send commands to devices'),
    ('firmware:read', 'View firmware and rollouts'),
    ('firmware:write', 'Upload and delete firmware'),
    ('firmware:deploy', 'Create and control firmware rollouts'),
    ('user:manage', 'Create, update, disable and delete users and assign their roles'),
    ('role:manage', 'Create, update and delete roles and their permissions'),
    ('audit:read', 'Read the audit log');

INSERT INTO roles (id, name, description, is_system, created_at, updated_at) VALUES
    ('00000000-0000-7000-8000-000000000001', 'admin', 'Full control of the platform', 1, 0, 0),
    ('00000000-0000-7000-8000-000000000002', 'operator', 'Manages devices, firmware and rollouts', 1, 0, 0),
    ('00000000-0000-7000-8000-000000000003', 'viewer', 'Read-only access to devices and firmware', 1, 0, 0);

INSERT INTO role_permissions (role_id, permission_code)
    SELECT '00000000-0000-7000-8000-000000000001', code FROM permissions;

INSERT INTO role_permissions (role_id, permission_code) VALUES
    ('00000000-0000-7000-8000-000000000002', 'device:read'),
    ('00000000-0000-7000-8000-000000000002', 'device:write'),
    ('00000000-0000-7000-8000-000000000002', 'device:command'),
    ('00000000-0000-7000-8000-000000000002', 'firmware:read'),
    ('00000000-0000-7000-8000-000000000002', 'firmware:write'),
    ('00000000-0000-7000-8000-000000000002', 'firmware:deploy'),
    ('00000000-0000-7000-8000-000000000003', 'device:read'),
    ('00000000-0000-7000-8000-000000000003', 'firmware:read');
