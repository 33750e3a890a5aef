-- A role's scope: what its permissions reach. 'fleet' acts on every owner's
-- devices, firmware and rollouts; 'own' only on those the user owns.
ALTER TABLE roles ADD COLUMN scope TEXT NOT NULL DEFAULT 'fleet' CHECK (scope IN ('fleet', 'own'));
