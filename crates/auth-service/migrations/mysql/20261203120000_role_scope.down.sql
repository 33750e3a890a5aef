ALTER TABLE roles DROP CONSTRAINT ck_roles_scope, DROP COLUMN scope;
