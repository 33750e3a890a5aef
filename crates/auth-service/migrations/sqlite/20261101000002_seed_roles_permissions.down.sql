DELETE FROM role_permissions WHERE role_id IN (
    '00000000-0000-7000-8000-000000000001',
    '00000000-0000-7000-8000-000000000002',
    '00000000-0000-7000-8000-000000000003');
DELETE FROM user_roles WHERE role_id IN (
    '00000000-0000-7000-8000-000000000001',
    '00000000-0000-7000-8000-000000000002',
    '00000000-0000-7000-8000-000000000003');
DELETE FROM roles WHERE id IN (
    '00000000-0000-7000-8000-000000000001',
    '00000000-0000-7000-8000-000000000002',
    '00000000-0000-7000-8000-000000000003');
DELETE FROM role_permissions WHERE permission_code IN (
    'device:read', 'device:write', 'device:command', 'firmware:read', 'firmware:write',
    'firmware:deploy', 'user:manage', 'role:manage', 'audit:read');
DELETE FROM permissions WHERE code IN (
    'device:read', 'device:write', 'device:command', 'firmware:read', 'firmware:write',
    'firmware:deploy', 'user:manage', 'role:manage', 'audit:read');
