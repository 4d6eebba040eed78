-- Roles and the schema (DESIGN.md §3, invariant 5).
--
-- crmd_owner owns every object; migrations run as it. It cannot log in: operators run migrations through an
-- administrative login that is a member of it (the runner does SET LOCAL ROLE crmd_owner).
-- crmd_app is the serving role: it owns nothing, is not a superuser and cannot bypass row-level security, so
-- every policy applies to everything the service does. Its password, if any, is set by the operator, never here.
-- Roles are cluster-wide, so they are created only when missing (several databases may share them).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crmd_owner') THEN
        CREATE ROLE crmd_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'crmd_app') THEN
        CREATE ROLE crmd_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
END
$$;

-- The migration login must be able to become the owner.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'crmd_owner', 'MEMBER') THEN
        EXECUTE format('GRANT crmd_owner TO %I', current_user);
    END IF;
END
$$;

-- The runner created the schema and its ledger before this migration could run; hand both to the owner.
ALTER SCHEMA crm OWNER TO crmd_owner;
ALTER TABLE crm.schema_migrations OWNER TO crmd_owner;
REVOKE ALL ON SCHEMA crm FROM PUBLIC;
GRANT USAGE ON SCHEMA crm TO crmd_app;

-- The service reads the ledger to report whether migrations are current (/health/ready).
GRANT SELECT ON crm.schema_migrations TO crmd_app;

-- Functions are executable by PUBLIC by default; in this schema only what is granted explicitly.
ALTER DEFAULT PRIVILEGES FOR ROLE crmd_owner IN SCHEMA crm REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
