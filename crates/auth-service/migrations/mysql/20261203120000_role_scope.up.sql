-- A role's scope: what its permissions reach. 'fleet' acts on every owner's
-- devices, firmware and rollouts; 'own' only on those the user owns.
ALTER TABLE roles ADD COLUMN scope VARCHAR(8) NOT NULL DEFAULT 'fleet',
    ADD CONSTRAINT ck_roles_scope CHECK (scope IN ('fleet', 'own'));
