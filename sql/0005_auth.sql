-- Accounts, memberships, roles and sessions (issue #4; DESIGN.md §3 invariants 5, 6, 8, 10, 12 and §5).
--
-- A user is global (one email, one password) and belongs to tenants through memberships, each with a role whose
-- permissions live in crm.role_permissions: the application asks the database what a role may do, it never
-- hard-codes it, and the default role for new members is the row marked is_default.
--
-- Secrets at rest: passwords as argon2id PHC strings (computed by crmd off the loop), refresh and e-mail tokens as
-- SHA-256 digests only. Nothing here can give a token back.
--
-- Writes go through the SECURITY DEFINER functions below, which run as the owner, check every rule inside the one
-- transaction that makes the change, and append the audit row in it. Most of them are the doors of requests that
-- have no tenant yet (registration, login, refresh, password reset); crmd_app has no INSERT, UPDATE or DELETE
-- privilege on these tables at all. Reads of tenant-scoped rows by crmd_app go through row-level security.
--
-- Lock order, in every function that changes a user's sessions or tokens: the user's row first (FOR NO KEY
-- UPDATE), then token rows. It serialises those changes per user, so two of them never deadlock, and it closes the
-- race where a refresh running concurrently with "log out everywhere" or a password reset would commit a new token
-- after the revocation had looked. Access tokens take their issue time from the same transaction
-- (clock_timestamp() under the user's lock), so "tokens issued before the reset" is decided on one clock.
--
-- Requests about an address that may or may not have an account (registration, resend, password reset) do the same
-- database work either way: each writes its per-address throttle row (crm.auth_mail_throttle, keyed by a digest of
-- the address), so neither the answer nor the time of its commit tells whether the account exists.
--
-- Lockout lives here, not in a process, so that it holds across every crmd process sharing the database: after 5
-- failed logins within 15 minutes an account is locked for 1 minute, doubling with every further lock up to 1 hour,
-- and an account never takes more than 100 failed attempts in an hour (the rest are refused unchecked).

CREATE TABLE crm.roles (
    role text PRIMARY KEY CHECK (role ~ '^[a-z][a-z_]{0,31}$'),
    rank integer NOT NULL UNIQUE, -- lower is more powerful
    is_default boolean NOT NULL DEFAULT false,
    description text NOT NULL
);
-- Exactly one default role at most.
CREATE UNIQUE INDEX roles_one_default ON crm.roles (is_default) WHERE is_default;

CREATE TABLE crm.role_permissions (
    role text NOT NULL REFERENCES crm.roles (role) ON DELETE CASCADE,
    permission text NOT NULL CHECK (permission ~ '^[a-z]+\.[a-z_]+$'),
    PRIMARY KEY (role, permission)
);

INSERT INTO crm.roles (role, rank, is_default, description) VALUES
    ('owner', 0, false, 'Everything, including granting ownership and managing the tenant'),
    ('admin', 10, false, 'Everything except ownership: users, invitations, audit log, all records'),
    ('member', 20, true, 'Reads and writes records'),
    ('viewer', 30, false, 'Reads records');

INSERT INTO crm.role_permissions (role, permission)
SELECT r.role, p.permission
FROM (VALUES
    ('owner', '{users.read,users.invite,users.manage,audit.read,contacts.read,contacts.write,contacts.delete,tenant.manage}'::text[]),
    ('admin', '{users.read,users.invite,users.manage,audit.read,contacts.read,contacts.write,contacts.delete}'::text[]),
    ('member', '{contacts.read,contacts.write}'::text[]),
    ('viewer', '{contacts.read}'::text[])
) AS r (role, perms), unnest(r.perms) AS p (permission);

GRANT SELECT ON crm.roles, crm.role_permissions TO crmd_app;

CREATE TABLE crm.users (
    user_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Normalised by crmd (trimmed, ASCII lower case) before it gets here; the check keeps it that way.
    email text NOT NULL UNIQUE CHECK (email = btrim(email) AND email !~ '[A-Z]' AND length(email) BETWEEN 3 AND 254),
    name text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%' AND length(password_hash) < 160),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    email_verified_at timestamptz,
    -- Failed-login tracking: failures in the current 15-minute window, in the current hour, and the lock.
    failed_count integer NOT NULL DEFAULT 0,
    failed_window_start timestamptz,
    hour_failures integer NOT NULL DEFAULT 0,
    hour_window_start timestamptz,
    lock_level integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    -- Access tokens issued before this instant are refused (logout-all, password reset).
    tokens_valid_after timestamptz NOT NULL DEFAULT '-infinity',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.memberships (
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    user_id uuid NOT NULL REFERENCES crm.users (user_id),
    role text NOT NULL REFERENCES crm.roles (role),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_by_user ON crm.memberships (user_id, created_at);
CREATE INDEX memberships_by_tenant_created ON crm.memberships (tenant_id, created_at, user_id);

CREATE TABLE crm.refresh_tokens (
    token_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    family_id uuid NOT NULL,
    parent_id bigint REFERENCES crm.refresh_tokens (token_id),
    user_id uuid NOT NULL REFERENCES crm.users (user_id),
    tenant_id uuid NOT NULL REFERENCES crm.tenants (tenant_id),
    issued_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,        -- idle expiry of this token
    family_expires_at timestamptz NOT NULL, -- absolute expiry of the family
    consumed_at timestamptz,
    replaced_by bigint REFERENCES crm.refresh_tokens (token_id),
    revoked_at timestamptz,
    user_agent text CHECK (length(user_agent) <= 512),
    ip inet
);
CREATE INDEX refresh_tokens_family ON crm.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_live_by_user ON crm.refresh_tokens (user_id, tenant_id) WHERE revoked_at IS NULL;

CREATE TABLE crm.email_tokens (
    token_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    purpose text NOT NULL CHECK (purpose IN ('verify', 'reset', 'invite')),
    user_id uuid REFERENCES crm.users (user_id),         -- verify, reset
    email text CHECK (length(email) <= 254),              -- invite
    tenant_id uuid REFERENCES crm.tenants (tenant_id),   -- invite
    role text REFERENCES crm.roles (role),                -- invite
    invited_by uuid REFERENCES crm.users (user_id),       -- invite
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    CHECK ((purpose = 'invite') = (tenant_id IS NOT NULL AND email IS NOT NULL AND role IS NOT NULL)),
    CHECK ((purpose = 'invite') <> (user_id IS NOT NULL))
);
CREATE INDEX email_tokens_by_user ON crm.email_tokens (user_id, purpose, created_at) WHERE user_id IS NOT NULL;
CREATE INDEX email_tokens_by_tenant ON crm.email_tokens (tenant_id, created_at) WHERE tenant_id IS NOT NULL;

-- Per-address limits on mail sent on request (verification resends, password resets, "someone tried to register"),
-- for every address asked about, with or without an account. Not tenant-scoped; only the functions below use it.
CREATE TABLE crm.auth_mail_throttle (
    purpose text NOT NULL CHECK (purpose IN ('verify', 'reset', 'register_attempt')),
    email_digest bytea NOT NULL CHECK (length(email_digest) = 32),
    last_at timestamptz NOT NULL,
    hour_start timestamptz NOT NULL,
    hour_count integer NOT NULL,
    PRIMARY KEY (purpose, email_digest)
);
CREATE INDEX auth_mail_throttle_by_age ON crm.auth_mail_throttle (hour_start);
ALTER TABLE crm.auth_mail_throttle ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.auth_mail_throttle FORCE ROW LEVEL SECURITY;
CREATE POLICY auth_mail_throttle_owner_all ON crm.auth_mail_throttle TO crmd_owner USING (true) WITH CHECK (true);

-- Row-level security. FORCE applies it to the owner too; the owner's own policy lets the functions below serve
-- every tenant. crmd_app sees the members of its current tenant and that tenant's sessions and invitations.
ALTER TABLE crm.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.users FORCE ROW LEVEL SECURITY;
CREATE POLICY users_owner_all ON crm.users TO crmd_owner USING (true) WITH CHECK (true);
CREATE POLICY users_member_read ON crm.users FOR SELECT TO crmd_app
    USING (EXISTS (SELECT FROM crm.memberships m
                   WHERE m.user_id = users.user_id AND m.tenant_id = crm.current_tenant()));

ALTER TABLE crm.memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY memberships_owner_all ON crm.memberships TO crmd_owner USING (true) WITH CHECK (true);
CREATE POLICY memberships_tenant_read ON crm.memberships FOR SELECT TO crmd_app
    USING (tenant_id = crm.current_tenant());

ALTER TABLE crm.refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY refresh_tokens_owner_all ON crm.refresh_tokens TO crmd_owner USING (true) WITH CHECK (true);
CREATE POLICY refresh_tokens_tenant_read ON crm.refresh_tokens FOR SELECT TO crmd_app
    USING (tenant_id = crm.current_tenant());

ALTER TABLE crm.email_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.email_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY email_tokens_owner_all ON crm.email_tokens TO crmd_owner USING (true) WITH CHECK (true);
CREATE POLICY email_tokens_tenant_read ON crm.email_tokens FOR SELECT TO crmd_app
    USING (tenant_id = crm.current_tenant());

-- No password hash, lockout counter or token digest is readable by the serving role.
GRANT SELECT (user_id, email, name, status, email_verified_at, created_at, updated_at) ON crm.users TO crmd_app;
GRANT SELECT ON crm.memberships TO crmd_app;
GRANT SELECT (token_id, family_id, parent_id, user_id, tenant_id, issued_at, expires_at, family_expires_at,
              consumed_at, replaced_by, revoked_at) ON crm.refresh_tokens TO crmd_app;
GRANT SELECT (token_id, purpose, email, tenant_id, role, invited_by, created_at, expires_at, used_at)
    ON crm.email_tokens TO crmd_app;

-- The owner needs tenants and the audit log across tenants for registration and the audited doors below.
CREATE POLICY tenants_owner_all ON crm.tenants TO crmd_owner USING (true) WITH CHECK (true);
CREATE POLICY audit_log_owner_all ON crm.audit_log TO crmd_owner USING (true) WITH CHECK (true);

-- Every SECURITY DEFINER function here is PL/pgSQL, even where one SQL statement would do: PostgreSQL neither
-- inlines nor caches the plan of a SECURITY DEFINER or SET-carrying SQL function, and re-planning its body on every
-- call cost /v1/me's check eight times the query itself. PL/pgSQL keeps its plans for the session.

-- ---- internal helpers (not granted to crmd_app) ----

-- Appends an audit row for p_tenant (none: nothing to attach it to, so nothing is written).
CREATE FUNCTION crm.auth_audit(p_tenant uuid, p_actor uuid, p_action text, p_target_type text, p_target_id text,
                               p_ip inet, p_ua text, p_rid text, p_meta jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    INSERT INTO crm.audit_log (tenant_id, actor_type, actor_id, action, target_type, target_id, ip, user_agent,
                               request_id, metadata)
    SELECT p_tenant, CASE WHEN p_actor IS NULL THEN 'system' ELSE 'user' END, p_actor::text, p_action, p_target_type,
           p_target_id, p_ip, left(p_ua, 512), left(p_rid, 128), coalesce(p_meta, '{}')
    WHERE p_tenant IS NOT NULL;
END
$$;

-- Audits an event of a user in every tenant the user belongs to (events before any tenant is chosen: e-mail
-- verification, password reset).
CREATE FUNCTION crm.auth_audit_user(p_user uuid, p_action text, p_ip inet, p_ua text, p_rid text, p_meta jsonb)
    RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    PERFORM crm.auth_audit(m.tenant_id, p_user, p_action, 'user', p_user::text, p_ip, p_ua, p_rid, p_meta)
    FROM crm.memberships m WHERE m.user_id = p_user;
END
$$;

-- Enqueues a mail.send job (payload composed and validated by crmd) for p_tenant (none: a system job), in the
-- caller's transaction. 16 attempts, as app/mailer (CRM_APP_MAIL_MAX_ATTEMPTS).
CREATE FUNCTION crm.auth_enqueue_mail(p_tenant uuid, p_payload jsonb, p_unique_key text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_previous text := current_setting('app.tenant_id', true);
BEGIN
    IF p_payload IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('app.tenant_id', coalesce(p_tenant::text, ''), true);
    PERFORM crm.job_enqueue('mail.send', p_payload, 0, 16, p_unique_key);
    PERFORM set_config('app.tenant_id', coalesce(v_previous, ''), true);
END
$$;

-- Counts a mail request about p_email for p_purpose and says whether a mail may go: at least p_gap since the last
-- one that went, at most p_per_hour in the current hour. Always writes the row (see the top of this file).
CREATE FUNCTION crm.auth_mail_allowed(p_purpose text, p_email text, p_gap interval, p_per_hour integer)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_allowed boolean;
BEGIN
    INSERT INTO crm.auth_mail_throttle AS t (purpose, email_digest, last_at, hour_start, hour_count)
    VALUES (p_purpose, sha256(convert_to(p_email, 'UTF8')), '-infinity', now(), 0)
    ON CONFLICT (purpose, email_digest) DO UPDATE SET hour_count = t.hour_count
    RETURNING t.last_at <= now() - p_gap
              AND (t.hour_start <= now() - interval '1 hour' OR t.hour_count < p_per_hour)
    INTO v_allowed;
    UPDATE crm.auth_mail_throttle t
    SET last_at = CASE WHEN v_allowed THEN now() ELSE t.last_at END,
        hour_start = CASE WHEN t.hour_start <= now() - interval '1 hour' THEN now() ELSE t.hour_start END,
        hour_count = CASE WHEN t.hour_start <= now() - interval '1 hour' THEN 0 ELSE t.hour_count END
                     + CASE WHEN v_allowed THEN 1 ELSE 0 END
    WHERE t.purpose = p_purpose AND t.email_digest = sha256(convert_to(p_email, 'UTF8'));
    -- Each call also forgets two rows nobody has asked about for an hour (no gap or window is longer), so the table
    -- holds about the addresses of the last hour whatever the number of addresses ever asked about.
    DELETE FROM crm.auth_mail_throttle t
    WHERE t.ctid IN (SELECT o.ctid FROM crm.auth_mail_throttle o
                     WHERE o.hour_start < now() - interval '1 hour' AND o.last_at < now() - interval '1 hour'
                     LIMIT 2 FOR UPDATE SKIP LOCKED);
    RETURN v_allowed;
END
$$;

-- Locks a user's row for a change of their sessions or tokens (the lock order at the top of this file).
CREATE FUNCTION crm.auth_lock_user(p_user uuid) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    PERFORM FROM crm.users u WHERE u.user_id = p_user FOR NO KEY UPDATE;
    RETURN FOUND;
END
$$;

-- Consumes a live verification or reset token under its user's lock (the lock order at the top of this file) and
-- returns the user, or NULL when the token is unknown, used or expired.
CREATE FUNCTION crm.auth_consume_email_token(p_token_hash bytea, p_purpose text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_user uuid;
BEGIN
    SELECT t.user_id INTO v_user FROM crm.email_tokens t WHERE t.token_hash = p_token_hash AND t.purpose = p_purpose;
    IF v_user IS NULL OR NOT crm.auth_lock_user(v_user) THEN
        RETURN NULL;
    END IF;
    UPDATE crm.email_tokens t SET used_at = now()
    WHERE t.token_hash = p_token_hash AND t.used_at IS NULL AND t.expires_at > now();
    RETURN CASE WHEN FOUND THEN v_user END;
END
$$;

-- The current time in milliseconds since the epoch, as access tokens carry it (iat_ms).
CREATE FUNCTION crm.auth_now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Revokes every live token of a family, or of a user (in one tenant, or in all of them).
CREATE FUNCTION crm.auth_revoke(p_family uuid, p_user uuid, p_tenant uuid) RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE crm.refresh_tokens t SET revoked_at = now()
    WHERE t.revoked_at IS NULL
      AND (p_family IS NULL OR t.family_id = p_family)
      AND (p_user IS NULL OR t.user_id = p_user)
      AND (p_tenant IS NULL OR t.tenant_id = p_tenant)
      AND (p_family IS NOT NULL OR p_user IS NOT NULL);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- ---- the doors ----

-- Registration. A new address gets a user (unverified), a tenant, the owner membership, a verification token and
-- its mail; an address that exists gets the "someone tried to register" mail instead (de-duplicated while one is
-- pending), and the caller answers both the same way. Concurrent registrations of one address serialise on the
-- unique index: exactly one creates the user. Returns whether it did (for logs and tests, never for the client).
CREATE FUNCTION crm.auth_register(p_email text, p_hash text, p_name text, p_tenant_name text, p_token_hash bytea,
                                  p_token_ttl_s integer, p_verify_mail jsonb, p_exists_mail jsonb, p_ip inet,
                                  p_ua text, p_rid text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_user uuid;
    v_tenant uuid := gen_random_uuid();
BEGIN
    -- Input the tables would refuse is refused before anything depends on whether the address exists (crmd
    -- validates the same rules first; this keeps the function honest on its own).
    IF length(btrim(p_name)) NOT BETWEEN 1 AND 200 OR length(btrim(p_tenant_name)) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'name and tenant name must be 1 to 200 characters' USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO crm.users (email, name, password_hash) VALUES (p_email, btrim(p_name), p_hash)
    ON CONFLICT (email) DO NOTHING
    RETURNING user_id INTO v_user;
    IF v_user IS NULL THEN
        -- At most one "someone tried" mail an hour per address: the mail must not become a way to flood an inbox.
        IF crm.auth_mail_allowed('register_attempt', p_email, interval '1 hour', 1) THEN
            PERFORM crm.auth_enqueue_mail(NULL, p_exists_mail, NULL);
        END IF;
        RETURN false;
    END IF;
    INSERT INTO crm.tenants (tenant_id, name) VALUES (v_tenant, btrim(p_tenant_name));
    INSERT INTO crm.memberships (tenant_id, user_id, role) VALUES (v_tenant, v_user, 'owner');
    INSERT INTO crm.email_tokens (token_hash, purpose, user_id, expires_at)
    VALUES (p_token_hash, 'verify', v_user, now() + p_token_ttl_s * interval '1 second');
    PERFORM crm.auth_enqueue_mail(v_tenant, p_verify_mail, NULL);
    PERFORM crm.auth_mail_allowed('verify', p_email, interval '60 seconds', 10); -- counts as the first one sent
    PERFORM crm.auth_audit(v_tenant, v_user, 'auth.register', 'user', v_user::text, p_ip, p_ua, p_rid,
                           jsonb_build_object('tenant_name', btrim(p_tenant_name)));
    RETURN true;
END
$$;

-- Consumes a verification token; false when it is unknown, used or expired.
CREATE FUNCTION crm.auth_verify_email(p_token_hash bytea, p_ip inet, p_ua text, p_rid text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_user uuid;
BEGIN
    v_user := crm.auth_consume_email_token(p_token_hash, 'verify');
    IF v_user IS NULL THEN
        RETURN false;
    END IF;
    UPDATE crm.users u SET email_verified_at = coalesce(u.email_verified_at, now()), updated_at = now()
    WHERE u.user_id = v_user;
    PERFORM crm.auth_audit_user(v_user, 'auth.email_verified', p_ip, p_ua, p_rid, NULL);
    RETURN true;
END
$$;

-- A fresh verification token and mail for an unverified active account, at most one a minute and ten an hour per
-- address; earlier unused verification tokens stop working. Silent in every other case.
CREATE FUNCTION crm.auth_resend_verification(p_email text, p_token_hash bytea, p_token_ttl_s integer,
                                             p_mail jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_user uuid;
BEGIN
    IF NOT crm.auth_mail_allowed('verify', p_email, interval '60 seconds', 10) THEN
        RETURN;
    END IF;
    SELECT u.user_id INTO v_user FROM crm.users u
    WHERE u.email = p_email AND u.email_verified_at IS NULL AND u.status = 'active'
    FOR NO KEY UPDATE;
    IF v_user IS NULL THEN
        RETURN;
    END IF;
    UPDATE crm.email_tokens t SET used_at = now()
    WHERE t.user_id = v_user AND t.purpose = 'verify' AND t.used_at IS NULL;
    INSERT INTO crm.email_tokens (token_hash, purpose, user_id, expires_at)
    VALUES (p_token_hash, 'verify', v_user, now() + p_token_ttl_s * interval '1 second');
    PERFORM crm.auth_enqueue_mail(NULL, p_mail, NULL);
END
$$;

-- First half of a login, before the password is checked off the loop: the stored hash and whether the account
-- can log in at all. No row: no such account.
CREATE FUNCTION crm.auth_login_lookup(p_email text)
    RETURNS TABLE (user_id uuid, password_hash text, state text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    RETURN QUERY
    SELECT u.user_id, u.password_hash,
           CASE WHEN u.locked_until > now() THEN 'locked' WHEN u.status <> 'active' THEN 'disabled' ELSE 'ok' END
    FROM crm.users u WHERE u.email = p_email;
END
$$;

-- Second half of a login, with the verdict on the password (checked against p_checked_hash, the hash the first
-- half read). Re-reads the account under a row lock, so that the
-- failure counters are exact whatever the number of processes, and a lock taken meanwhile by concurrent failures
-- wins over a correct password. Outcomes:
--   ok          a new refresh family was created (p_refresh_hash); tenant_id and role say for which membership;
--   invalid     wrong password, unknown, disabled or locked account, no usable membership: the generic answer;
--   unverified  the password was right but the address is not verified yet.
CREATE FUNCTION crm.auth_login_finish(p_user uuid, p_password_ok boolean, p_checked_hash text, p_tenant uuid,
                                      p_refresh_hash bytea, p_idle_s integer, p_absolute_s integer, p_ip inet,
                                      p_ua text, p_rid text)
    RETURNS TABLE (outcome text, tenant_id uuid, role text, issued_ms bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v crm.users%ROWTYPE;
    v_member crm.memberships%ROWTYPE;
    v_audit_tenant uuid;
    v_lock interval;
    v_reason text;
BEGIN
    SELECT * INTO v FROM crm.users u WHERE u.user_id = p_user FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        outcome := 'invalid';
        RETURN NEXT;
        RETURN;
    END IF;
    -- The membership the session is for: the requested tenant, else the oldest active one.
    SELECT * INTO v_member FROM crm.memberships m
    WHERE m.user_id = v.user_id AND m.status = 'active' AND (p_tenant IS NULL OR m.tenant_id = p_tenant)
    ORDER BY m.created_at, m.tenant_id LIMIT 1;
    v_audit_tenant := coalesce(v_member.tenant_id,
                               (SELECT m.tenant_id FROM crm.memberships m WHERE m.user_id = v.user_id
                                ORDER BY m.created_at LIMIT 1));

    IF v.locked_until > now() THEN
        v_reason := 'locked';
    ELSIF v.status <> 'active' THEN
        v_reason := 'disabled';
    ELSIF p_password_ok AND v.password_hash IS DISTINCT FROM p_checked_hash THEN
        -- The password was checked against a hash that a reset replaced meanwhile: it proves nothing now, and it
        -- is not counted against the account either.
        v_reason := 'password_changed';
    ELSIF NOT p_password_ok THEN
        v_reason := 'wrong_password';
        IF v.failed_window_start IS NULL OR v.failed_window_start <= now() - interval '15 minutes' THEN
            v.failed_window_start := now();
            v.failed_count := 0;
        END IF;
        IF v.hour_window_start IS NULL OR v.hour_window_start <= now() - interval '1 hour' THEN
            v.hour_window_start := now();
            v.hour_failures := 0;
        END IF;
        v.failed_count := v.failed_count + 1;
        v.hour_failures := v.hour_failures + 1;
        IF v.failed_count >= 5 THEN
            v_lock := least(interval '1 minute' * power(2, least(v.lock_level, 10)), interval '1 hour');
            v.locked_until := now() + v_lock;
            v.lock_level := v.lock_level + 1;
            v.failed_count := 0;
            v.failed_window_start := NULL;
        END IF;
        IF v.hour_failures >= 100 THEN
            v.locked_until := greatest(v.locked_until, v.hour_window_start + interval '1 hour');
        END IF;
        UPDATE crm.users u
        SET failed_count = v.failed_count, failed_window_start = v.failed_window_start,
            hour_failures = v.hour_failures, hour_window_start = v.hour_window_start, lock_level = v.lock_level,
            locked_until = v.locked_until, updated_at = now()
        WHERE u.user_id = v.user_id;
        IF v.locked_until > now() THEN
            PERFORM crm.auth_audit(v_audit_tenant, v.user_id, 'auth.lockout', 'user', v.user_id::text, p_ip, p_ua,
                                   p_rid, jsonb_build_object('locked_until', v.locked_until,
                                                             'hour_failures', v.hour_failures));
        END IF;
    ELSE
        -- A correct password ends the failure streak.
        IF v.failed_count <> 0 OR v.lock_level <> 0 OR v.locked_until IS NOT NULL THEN
            UPDATE crm.users u
            SET failed_count = 0, failed_window_start = NULL, lock_level = 0, locked_until = NULL,
                updated_at = now()
            WHERE u.user_id = v.user_id;
        END IF;
        IF v.email_verified_at IS NULL THEN
            v_reason := 'unverified';
        ELSIF v_member.tenant_id IS NULL THEN
            v_reason := 'no_membership';
        END IF;
    END IF;

    IF v_reason IS NOT NULL THEN
        PERFORM crm.auth_audit(v_audit_tenant, v.user_id, 'auth.login_failed', 'user', v.user_id::text, p_ip, p_ua,
                               p_rid, jsonb_build_object('reason', v_reason));
        outcome := CASE WHEN v_reason = 'unverified' THEN 'unverified' ELSE 'invalid' END;
        RETURN NEXT;
        RETURN;
    END IF;

    INSERT INTO crm.refresh_tokens (token_hash, family_id, user_id, tenant_id, expires_at, family_expires_at,
                                    user_agent, ip)
    VALUES (p_refresh_hash, gen_random_uuid(), v.user_id, v_member.tenant_id,
            now() + least(p_idle_s, p_absolute_s) * interval '1 second', now() + p_absolute_s * interval '1 second',
            left(p_ua, 512), p_ip);
    PERFORM crm.auth_audit(v_member.tenant_id, v.user_id, 'auth.login', 'user', v.user_id::text, p_ip, p_ua, p_rid,
                           NULL);
    outcome := 'ok';
    tenant_id := v_member.tenant_id;
    role := v_member.role;
    issued_ms := crm.auth_now_ms();
    RETURN NEXT;
END
$$;

-- Stores a fresh hash of the same password (parameters raised since it was made), unless it changed meanwhile.
CREATE FUNCTION crm.auth_rehash(p_user uuid, p_old_hash text, p_new_hash text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    UPDATE crm.users u SET password_hash = p_new_hash, updated_at = now()
    WHERE u.user_id = p_user AND u.password_hash = p_old_hash;
    RETURN FOUND;
END
$$;

-- Refresh-token rotation. The presented token (p_hash) is consumed and replaced by p_new_hash, in the same family.
-- crmd derives the new token from the presented one with a server key, so a client that lost the answer and
-- retries with the same token within p_grace_s asks for the very child that was made for it: that is the grace
-- case, answered with the same child, still live. Presenting any other consumed token is reuse: the family is
-- revoked. Outcomes: ok (grace tells which case), reuse, invalid.
CREATE FUNCTION crm.auth_refresh(p_hash bytea, p_new_hash bytea, p_idle_s integer, p_grace_s integer, p_ip inet,
                                 p_ua text, p_rid text)
    RETURNS TABLE (outcome text, user_id uuid, tenant_id uuid, role text, grace boolean, issued_ms bigint)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v crm.refresh_tokens%ROWTYPE;
    v_child crm.refresh_tokens%ROWTYPE;
    v_member crm.memberships%ROWTYPE;
    v_new bigint;
BEGIN
    SELECT * INTO v FROM crm.refresh_tokens t WHERE t.token_hash = p_hash;
    IF FOUND AND crm.auth_lock_user(v.user_id) THEN
        SELECT * INTO v FROM crm.refresh_tokens t WHERE t.token_id = v.token_id FOR UPDATE;
    END IF;
    IF v.token_id IS NULL OR v.revoked_at IS NOT NULL OR v.family_expires_at <= now() THEN
        outcome := 'invalid';
        RETURN NEXT;
        RETURN;
    END IF;
    IF v.replaced_by IS NOT NULL THEN
        SELECT * INTO v_child FROM crm.refresh_tokens t WHERE t.token_id = v.replaced_by;
        IF v.consumed_at > now() - p_grace_s * interval '1 second' AND v_child.token_hash = p_new_hash
           AND v_child.revoked_at IS NULL AND v_child.replaced_by IS NULL THEN
            v_new := v_child.token_id;
            grace := true;
        ELSE
            PERFORM crm.auth_revoke(v.family_id, NULL, NULL);
            PERFORM crm.auth_audit(v.tenant_id, v.user_id, 'auth.refresh_reuse', 'session', v.family_id::text, p_ip,
                                   p_ua, p_rid, jsonb_build_object('token_id', v.token_id));
            outcome := 'reuse';
            RETURN NEXT;
            RETURN;
        END IF;
    ELSIF v.expires_at <= now() THEN
        outcome := 'invalid';
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT m.* INTO v_member FROM crm.memberships m JOIN crm.users u ON u.user_id = m.user_id
    WHERE m.tenant_id = v.tenant_id AND m.user_id = v.user_id AND m.status = 'active' AND u.status = 'active';
    IF NOT FOUND THEN
        PERFORM crm.auth_revoke(v.family_id, NULL, NULL);
        outcome := 'invalid';
        RETURN NEXT;
        RETURN;
    END IF;

    IF v_new IS NULL THEN
        INSERT INTO crm.refresh_tokens (token_hash, family_id, parent_id, user_id, tenant_id, expires_at,
                                        family_expires_at, user_agent, ip)
        VALUES (p_new_hash, v.family_id, v.token_id, v.user_id, v.tenant_id,
                least(now() + p_idle_s * interval '1 second', v.family_expires_at), v.family_expires_at,
                left(p_ua, 512), p_ip)
        RETURNING token_id INTO v_new;
        UPDATE crm.refresh_tokens t SET consumed_at = now(), replaced_by = v_new WHERE t.token_id = v.token_id;
        grace := false;
    END IF;
    PERFORM crm.auth_audit(v.tenant_id, v.user_id, 'auth.refresh', 'session', v.family_id::text, p_ip, p_ua, p_rid,
                           jsonb_build_object('grace', grace));
    outcome := 'ok';
    user_id := v.user_id;
    tenant_id := v.tenant_id;
    role := v_member.role;
    issued_ms := crm.auth_now_ms();
    RETURN NEXT;
END
$$;

-- Logout: revokes the presented token's family. Unknown tokens change nothing.
CREATE FUNCTION crm.auth_logout(p_hash bytea, p_ip inet, p_ua text, p_rid text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v crm.refresh_tokens%ROWTYPE;
BEGIN
    SELECT * INTO v FROM crm.refresh_tokens t WHERE t.token_hash = p_hash;
    IF NOT FOUND OR NOT crm.auth_lock_user(v.user_id) THEN
        RETURN false;
    END IF;
    SELECT * INTO v FROM crm.refresh_tokens t WHERE t.token_id = v.token_id;
    IF v.revoked_at IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM crm.auth_revoke(v.family_id, NULL, NULL);
    PERFORM crm.auth_audit(v.tenant_id, v.user_id, 'auth.logout', 'session', v.family_id::text, p_ip, p_ua, p_rid,
                           NULL);
    RETURN true;
END
$$;

-- Logout everywhere: every family of the user in every tenant, and every access token issued before now.
CREATE FUNCTION crm.auth_logout_all(p_user uuid, p_tenant uuid, p_ip inet, p_ua text, p_rid text) RETURNS integer
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM crm.auth_lock_user(p_user);
    UPDATE crm.users u SET tokens_valid_after = clock_timestamp(), updated_at = now() WHERE u.user_id = p_user;
    v_count := crm.auth_revoke(NULL, p_user, NULL);
    PERFORM crm.auth_audit(p_tenant, p_user, 'auth.logout_all', 'user', p_user::text, p_ip, p_ua, p_rid,
                           jsonb_build_object('sessions', v_count));
    RETURN v_count;
END
$$;

-- A password-reset token and its mail, for an active account, at most one a minute and five an hour; earlier
-- unused reset tokens stop working. Silent in every other case.
CREATE FUNCTION crm.auth_password_forgot(p_email text, p_token_hash bytea, p_token_ttl_s integer, p_mail jsonb,
                                         p_ip inet, p_ua text, p_rid text) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_user uuid;
BEGIN
    IF NOT crm.auth_mail_allowed('reset', p_email, interval '60 seconds', 5) THEN
        RETURN;
    END IF;
    SELECT u.user_id INTO v_user FROM crm.users u WHERE u.email = p_email AND u.status = 'active'
    FOR NO KEY UPDATE;
    IF v_user IS NULL THEN
        RETURN;
    END IF;
    UPDATE crm.email_tokens t SET used_at = now()
    WHERE t.user_id = v_user AND t.purpose = 'reset' AND t.used_at IS NULL;
    INSERT INTO crm.email_tokens (token_hash, purpose, user_id, expires_at)
    VALUES (p_token_hash, 'reset', v_user, now() + p_token_ttl_s * interval '1 second');
    PERFORM crm.auth_enqueue_mail(NULL, p_mail, NULL);
    PERFORM crm.auth_audit_user(v_user, 'auth.password_reset_requested', p_ip, p_ua, p_rid, NULL);
END
$$;

-- What a live e-mail token is for, before crmd checks or hashes a password against it: the address, the account
-- it belongs to (for an invitation, the existing account of the invited address, if any, with its hash, against
-- which crmd checks the password given), and the invitation's tenant name. No row: unknown, used or expired.
CREATE FUNCTION crm.auth_email_token_peek(p_token_hash bytea, p_purpose text)
    RETURNS TABLE (email text, user_id uuid, password_hash text, tenant_name text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    RETURN QUERY
    SELECT coalesce(u.email, t.email), u.user_id, CASE WHEN t.purpose = 'invite' THEN u.password_hash END, tn.name
    FROM crm.email_tokens t
    LEFT JOIN crm.users u ON u.user_id = t.user_id OR (t.user_id IS NULL AND u.email = t.email)
    LEFT JOIN crm.tenants tn ON tn.tenant_id = t.tenant_id
    WHERE t.token_hash = p_token_hash AND t.purpose = p_purpose AND t.used_at IS NULL AND t.expires_at > now();
END
$$;

-- Completes a password reset: consumes the token, stores the new hash, clears the lockout, marks the address
-- verified (the mail reached its owner), ends every session and mails a notice. False: the token is not live.
CREATE FUNCTION crm.auth_password_reset(p_token_hash bytea, p_new_hash text, p_mail jsonb, p_ip inet, p_ua text,
                                        p_rid text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
DECLARE
    v_user uuid;
BEGIN
    v_user := crm.auth_consume_email_token(p_token_hash, 'reset');
    IF v_user IS NULL THEN
        RETURN false;
    END IF;
    UPDATE crm.users u
    SET password_hash = p_new_hash, failed_count = 0, failed_window_start = NULL, hour_failures = 0,
        hour_window_start = NULL, lock_level = 0, locked_until = NULL,
        email_verified_at = coalesce(u.email_verified_at, now()), tokens_valid_after = clock_timestamp(),
        updated_at = now()
    WHERE u.user_id = v_user;
    PERFORM crm.auth_revoke(NULL, v_user, NULL);
    PERFORM crm.auth_enqueue_mail(NULL, p_mail, NULL);
    PERFORM crm.auth_audit_user(v_user, 'auth.password_reset', p_ip, p_ua, p_rid, NULL);
    RETURN true;
END
$$;

-- The current tenant's view of an authenticated user, read for every request (cached briefly by crmd): whether
-- the account and the membership are active, the role and its permissions (from the roles table), and when
-- access tokens started to count. No row: no membership in p_tenant.
CREATE FUNCTION crm.auth_principal(p_user uuid, p_tenant uuid)
    RETURNS TABLE (user_status text, member_status text, role text, permissions text[],
                   tokens_valid_after double precision, email text, name text, email_verified_at timestamptz,
                   created_at timestamptz, tenant_name text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    RETURN QUERY
    SELECT u.status, m.status, m.role,
           ARRAY(SELECT rp.permission FROM crm.role_permissions rp WHERE rp.role = m.role ORDER BY 1),
           extract(epoch FROM u.tokens_valid_after)::double precision, u.email, u.name, u.email_verified_at,
           u.created_at, t.name
    FROM crm.memberships m
    JOIN crm.users u ON u.user_id = m.user_id
    JOIN crm.tenants t ON t.tenant_id = m.tenant_id
    WHERE m.user_id = p_user AND m.tenant_id = p_tenant;
END
$$;

-- An invitation to the current tenant by p_inviter. Outcomes: ok, unknown_role, forbidden (only owners grant
-- owner), member (the address already belongs to the tenant).
CREATE FUNCTION crm.auth_invite(p_inviter uuid, p_email text, p_role text, p_token_hash bytea, p_ttl_s integer,
                                p_mail jsonb, p_ip inet, p_ua text, p_rid text)
    RETURNS TABLE (outcome text, invitation_id bigint, role text, expires_at timestamptz)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_tenant uuid := crm.current_tenant();
    v_role text;
    v_inviter_role text;
BEGIN
    SELECT r.role INTO v_role FROM crm.roles r
    WHERE (p_role IS NULL AND r.is_default) OR r.role = p_role;
    IF v_role IS NULL THEN
        outcome := 'unknown_role';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT m.role INTO v_inviter_role FROM crm.memberships m
    WHERE m.tenant_id = v_tenant AND m.user_id = p_inviter AND m.status = 'active';
    IF v_inviter_role IS NULL OR (v_role = 'owner' AND v_inviter_role <> 'owner') THEN
        outcome := 'forbidden';
        RETURN NEXT;
        RETURN;
    END IF;
    IF EXISTS (SELECT FROM crm.memberships m JOIN crm.users u ON u.user_id = m.user_id
               WHERE m.tenant_id = v_tenant AND u.email = p_email) THEN
        outcome := 'member';
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO crm.email_tokens (token_hash, purpose, email, tenant_id, role, invited_by, expires_at)
    VALUES (p_token_hash, 'invite', p_email, v_tenant, v_role, p_inviter, now() + p_ttl_s * interval '1 second')
    RETURNING token_id, email_tokens.expires_at INTO invitation_id, expires_at;
    PERFORM crm.auth_enqueue_mail(v_tenant, p_mail, NULL);
    PERFORM crm.auth_audit(v_tenant, p_inviter, 'user.invited', 'invitation', invitation_id::text, p_ip, p_ua, p_rid,
                           jsonb_build_object('email', p_email, 'role', v_role));
    outcome := 'ok';
    role := v_role;
    RETURN NEXT;
END
$$;

-- Accepts an invitation. With p_new_hash the invited address must have no account yet: one is created, verified
-- (the invitation mail reached it). Without it the account must exist (crmd has checked its password). Outcomes:
-- ok, invalid (token not live), conflict (the account appeared, vanished or changed its password since crmd looked).
CREATE FUNCTION crm.auth_accept_invitation(p_token_hash bytea, p_new_hash text, p_checked_hash text, p_name text,
                                           p_ip inet, p_ua text, p_rid text)
    RETURNS TABLE (outcome text, user_id uuid, tenant_id uuid, role text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v crm.email_tokens%ROWTYPE;
    v_user uuid;
BEGIN
    SELECT * INTO v FROM crm.email_tokens t
    WHERE t.token_hash = p_token_hash AND t.purpose = 'invite' AND t.used_at IS NULL AND t.expires_at > now()
    FOR UPDATE;
    -- The inviter must still be able to grant it: an admin removed since, or an owner demoted, no longer lets
    -- anyone in through an invitation they sent.
    IF NOT FOUND OR NOT EXISTS (
        SELECT FROM crm.memberships m
        JOIN crm.role_permissions rp ON rp.role = m.role AND rp.permission = 'users.invite'
        JOIN crm.users u ON u.user_id = m.user_id AND u.status = 'active'
        WHERE m.tenant_id = v.tenant_id AND m.user_id = v.invited_by AND m.status = 'active'
          AND (v.role <> 'owner' OR m.role = 'owner')) THEN
        outcome := 'invalid';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_new_hash IS NOT NULL THEN
        INSERT INTO crm.users (email, name, password_hash, email_verified_at)
        VALUES (v.email, btrim(p_name), p_new_hash, now())
        ON CONFLICT (email) DO NOTHING
        RETURNING users.user_id INTO v_user;
    ELSE
        -- crmd checked the password against p_checked_hash: it counts only if that is still the account's hash.
        SELECT u.user_id INTO v_user FROM crm.users u
        WHERE u.email = v.email AND u.password_hash = p_checked_hash AND u.status = 'active';
    END IF;
    IF v_user IS NULL THEN
        outcome := 'conflict';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE crm.email_tokens t SET used_at = now() WHERE t.token_id = v.token_id;
    INSERT INTO crm.memberships (tenant_id, user_id, role) VALUES (v.tenant_id, v_user, v.role)
    ON CONFLICT DO NOTHING;
    -- An existing member keeps the role they have; the answer says which one that is.
    SELECT m.role INTO role FROM crm.memberships m WHERE m.tenant_id = v.tenant_id AND m.user_id = v_user;
    PERFORM crm.auth_audit(v.tenant_id, v_user, 'user.invitation_accepted', 'user', v_user::text, p_ip, p_ua, p_rid,
                           jsonb_build_object('invitation_id', v.token_id, 'role', role));
    outcome := 'ok';
    user_id := v_user;
    tenant_id := v.tenant_id;
    RETURN NEXT;
END
$$;

-- Changes a member of the current tenant (role, status) on behalf of p_actor. Outcomes: ok, not_found, self (no
-- one changes their own membership), forbidden (only owners grant, change or disable an owner), last_owner (the
-- tenant keeps an active owner), unknown_role. Disabling revokes the member's sessions in this tenant at once.
CREATE FUNCTION crm.auth_update_member(p_actor uuid, p_user uuid, p_role text, p_status text, p_ip inet,
                                       p_ua text, p_rid text)
    RETURNS TABLE (outcome text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    v_tenant uuid := crm.current_tenant();
    v_actor_role text;
    v crm.memberships%ROWTYPE;
BEGIN
    -- Owner rows first, in a fixed order, so that two concurrent demotions of the last two owners serialise.
    PERFORM FROM crm.memberships m WHERE m.tenant_id = v_tenant AND m.role = 'owner'
    ORDER BY m.user_id FOR UPDATE;
    SELECT * INTO v FROM crm.memberships m WHERE m.tenant_id = v_tenant AND m.user_id = p_user FOR UPDATE;
    -- Then the user's row, as every change of sessions does: a refresh or login racing a disable either finishes
    -- first (and its token is revoked below) or waits and finds the membership disabled.
    PERFORM crm.auth_lock_user(p_user);
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_user = p_actor THEN
        outcome := 'self';
        RETURN NEXT;
        RETURN;
    END IF;
    IF p_role IS NOT NULL AND NOT EXISTS (SELECT FROM crm.roles r WHERE r.role = p_role) THEN
        outcome := 'unknown_role';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT m.role INTO v_actor_role FROM crm.memberships m
    WHERE m.tenant_id = v_tenant AND m.user_id = p_actor AND m.status = 'active';
    IF v_actor_role IS DISTINCT FROM 'owner' AND (v.role = 'owner' OR p_role = 'owner') THEN
        outcome := 'forbidden';
        RETURN NEXT;
        RETURN;
    END IF;
    IF v.role = 'owner' AND v.status = 'active'
       AND (coalesce(p_role, 'owner') <> 'owner' OR coalesce(p_status, 'active') <> 'active')
       AND NOT EXISTS (SELECT FROM crm.memberships m WHERE m.tenant_id = v_tenant AND m.role = 'owner'
                       AND m.status = 'active' AND m.user_id <> p_user) THEN
        outcome := 'last_owner';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE crm.memberships m
    SET role = coalesce(p_role, m.role), status = coalesce(p_status, m.status), updated_at = now()
    WHERE m.tenant_id = v_tenant AND m.user_id = p_user;
    IF p_role IS NOT NULL AND p_role <> v.role THEN
        PERFORM crm.auth_audit(v_tenant, p_actor, 'user.role_changed', 'user', p_user::text, p_ip, p_ua, p_rid,
                               jsonb_build_object('from', v.role, 'to', p_role));
    END IF;
    IF p_status IS NOT NULL AND p_status <> v.status THEN
        IF p_status = 'disabled' THEN
            PERFORM crm.auth_revoke(NULL, p_user, v_tenant);
        END IF;
        PERFORM crm.auth_audit(v_tenant, p_actor, CASE p_status WHEN 'disabled' THEN 'user.disabled'
                                                  ELSE 'user.enabled' END,
                               'user', p_user::text, p_ip, p_ua, p_rid, NULL);
    END IF;
    outcome := 'ok';
    RETURN NEXT;
END
$$;

-- Mail that carries a live token (verification, reset, invitation) is marked "secret" by crmd: once it has been
-- handed to the relay its text has no business staying in crm.jobs until retention purges it. A dead job keeps
-- its payload for an operator's replay (its token expires on its own).
CREATE FUNCTION crm.jobs_redact_secret() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, crm, pg_temp
    AS $$
BEGIN
    NEW.payload := jsonb_build_object('redacted', true, 'message_id', NEW.payload -> 'message_id');
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_redact_secret BEFORE UPDATE OF state ON crm.jobs
    FOR EACH ROW WHEN (NEW.state = 'succeeded' AND NEW.payload ? 'secret')
    EXECUTE FUNCTION crm.jobs_redact_secret();

REVOKE ALL ON FUNCTION crm.auth_audit(uuid, uuid, text, text, text, inet, text, text, jsonb),
    crm.auth_audit_user(uuid, text, inet, text, text, jsonb),
    crm.auth_enqueue_mail(uuid, jsonb, text),
    crm.auth_revoke(uuid, uuid, uuid),
    crm.auth_mail_allowed(text, text, interval, integer),
    crm.auth_lock_user(uuid),
    crm.auth_consume_email_token(bytea, text),
    crm.auth_now_ms(),
    crm.auth_register(text, text, text, text, bytea, integer, jsonb, jsonb, inet, text, text),
    crm.auth_verify_email(bytea, inet, text, text),
    crm.auth_resend_verification(text, bytea, integer, jsonb),
    crm.auth_login_lookup(text),
    crm.auth_login_finish(uuid, boolean, text, uuid, bytea, integer, integer, inet, text, text),
    crm.auth_rehash(uuid, text, text),
    crm.auth_refresh(bytea, bytea, integer, integer, inet, text, text),
    crm.auth_logout(bytea, inet, text, text),
    crm.auth_logout_all(uuid, uuid, inet, text, text),
    crm.auth_password_forgot(text, bytea, integer, jsonb, inet, text, text),
    crm.auth_email_token_peek(bytea, text),
    crm.auth_password_reset(bytea, text, jsonb, inet, text, text),
    crm.auth_principal(uuid, uuid),
    crm.auth_invite(uuid, text, text, bytea, integer, jsonb, inet, text, text),
    crm.auth_accept_invitation(bytea, text, text, text, inet, text, text),
    crm.auth_update_member(uuid, uuid, text, text, inet, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION crm.auth_register(text, text, text, text, bytea, integer, jsonb, jsonb, inet, text, text),
    crm.auth_verify_email(bytea, inet, text, text),
    crm.auth_resend_verification(text, bytea, integer, jsonb),
    crm.auth_login_lookup(text),
    crm.auth_login_finish(uuid, boolean, text, uuid, bytea, integer, integer, inet, text, text),
    crm.auth_rehash(uuid, text, text),
    crm.auth_refresh(bytea, bytea, integer, integer, inet, text, text),
    crm.auth_logout(bytea, inet, text, text),
    crm.auth_logout_all(uuid, uuid, inet, text, text),
    crm.auth_password_forgot(text, bytea, integer, jsonb, inet, text, text),
    crm.auth_email_token_peek(bytea, text),
    crm.auth_password_reset(bytea, text, jsonb, inet, text, text),
    crm.auth_principal(uuid, uuid),
    crm.auth_invite(uuid, text, text, bytea, integer, jsonb, inet, text, text),
    crm.auth_accept_invitation(bytea, text, text, text, inet, text, text),
    crm.auth_update_member(uuid, uuid, text, text, inet, text, text) TO crmd_app;
