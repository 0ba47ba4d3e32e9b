-- Safety layer: asset leases with fencing and FIFO waiters, RBAC rules / bindings / audit,
-- idempotency records. Idempotent: safe to apply twice.
CREATE SCHEMA IF NOT EXISTS execution;

-- ---------------------------------------------------------------------------------------------
-- Asset leases (safety/mutex.py). One row per held (tenant, asset); a waiter row per queued
-- request and asset. A request's ticket (one per request, shared by all its assets) orders the
-- queue: the smallest live ticket on every asset is served first, which is FIFO per asset and,
-- because tickets are totally ordered, can never deadlock across assets.
-- ---------------------------------------------------------------------------------------------
CREATE SEQUENCE IF NOT EXISTS execution.lock_fencing_seq;
CREATE SEQUENCE IF NOT EXISTS execution.lock_ticket_seq;

CREATE TABLE IF NOT EXISTS execution.execution_locks (
  tenant         text NOT NULL,
  asset          text NOT NULL,
  execution_id   text NOT NULL,
  owner          text NOT NULL DEFAULT '',
  fencing_token  bigint NOT NULL,
  acquired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
  renewed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  expires_at     timestamptz NOT NULL,
  PRIMARY KEY (tenant, asset)
);
-- No secondary indexes: the table only holds live leases (small), and every index would be
-- maintained on each acquire and release, the hot path.

CREATE TABLE IF NOT EXISTS execution.execution_lock_waiters (
  tenant        text NOT NULL,
  asset         text NOT NULL,
  execution_id  text NOT NULL,
  owner         text NOT NULL DEFAULT '',
  ticket        bigint NOT NULL,
  enqueued_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  seen_until    timestamptz NOT NULL,
  PRIMARY KEY (tenant, asset, execution_id)
);
CREATE INDEX IF NOT EXISTS execution_lock_waiters_queue_idx
  ON execution.execution_lock_waiters (tenant, asset, ticket);
CREATE INDEX IF NOT EXISTS execution_lock_waiters_exec_idx
  ON execution.execution_lock_waiters (tenant, execution_id);

-- Serialise every lease operation on one (tenant, asset); callers lock assets in sorted order.
CREATE OR REPLACE FUNCTION execution.lock_guard(p_tenant text, p_assets text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  -- volatile target-list functions run after ORDER BY, so the locks are taken in sorted order
  PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || chr(31) || a, 7423004))
     FROM unnest(p_assets) a ORDER BY a;
END $$;

-- Wake the head waiter of each asset (payload = its ticket) after a lease was freed.
CREATE OR REPLACE FUNCTION execution.lock_notify_heads(p_tenant text, p_assets text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('opsc_locks', h.ticket::text)
     FROM (SELECT min(w.ticket) AS ticket FROM execution.execution_lock_waiters w
            WHERE w.tenant = p_tenant AND w.asset = ANY (p_assets)
              AND w.seen_until > clock_timestamp() GROUP BY w.asset) h;
END $$;

-- Take one lease if it is free, expired or already ours (re-entrant: same token, longer
-- lease); returns its fencing token, or NULL when another execution holds it.
-- Callers hold the asset's lock_guard.
CREATE OR REPLACE FUNCTION execution.lock_take(
  p_tenant text, p_asset text, p_execution_id text, p_owner text,
  p_ttl_seconds double precision, p_now timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_token bigint;
BEGIN
  INSERT INTO execution.execution_locks AS l
    (tenant, asset, execution_id, owner, fencing_token, acquired_at, renewed_at, expires_at)
  VALUES (p_tenant, p_asset, p_execution_id, p_owner, nextval('execution.lock_fencing_seq'),
          p_now, p_now, p_now + make_interval(secs => p_ttl_seconds))
  ON CONFLICT (tenant, asset) DO UPDATE SET
    fencing_token = CASE WHEN l.execution_id = EXCLUDED.execution_id AND l.expires_at > p_now
                         THEN l.fencing_token ELSE EXCLUDED.fencing_token END,
    acquired_at = CASE WHEN l.execution_id = EXCLUDED.execution_id AND l.expires_at > p_now
                       THEN l.acquired_at ELSE EXCLUDED.acquired_at END,
    execution_id = EXCLUDED.execution_id, owner = EXCLUDED.owner,
    renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at
    WHERE l.execution_id = EXCLUDED.execution_id OR l.expires_at <= p_now
  RETURNING l.fencing_token INTO v_token;
  RETURN v_token;
END $$;

-- Try to take every asset in p_assets at once, or queue for them (p_enqueue).
-- Returns acquired + tokens {asset: token}, or the blocking asset, its holder and the number
-- of live waiters ahead. p_ticket: the request's ticket from an earlier call (keeps its place).
CREATE OR REPLACE FUNCTION execution.lock_acquire(
  p_tenant text, p_assets text[], p_execution_id text, p_owner text,
  p_ttl_seconds double precision, p_ticket bigint DEFAULT NULL, p_enqueue boolean DEFAULT true,
  p_wait_ttl_seconds double precision DEFAULT 30,
  OUT acquired boolean, OUT ticket bigint, OUT tokens jsonb, OUT blocked_asset text,
  OUT holder_execution_id text, OUT holder_owner text, OUT holder_expires_at timestamptz,
  OUT waiters_ahead int)
LANGUAGE plpgsql AS $$
DECLARE
  v_assets text[] := CASE WHEN cardinality(p_assets) = 1 THEN p_assets
                          ELSE ARRAY(SELECT DISTINCT a FROM unnest(p_assets) a ORDER BY 1) END;
  v_now timestamptz := clock_timestamp();
  v_ticket bigint := p_ticket;
  v_asset text;
  v_lock execution.execution_locks%ROWTYPE;
  v_tokens jsonb := '{}'::jsonb;
  v_token bigint;
  v_ahead int;
  v_held boolean;
BEGIN
  IF p_ticket IS NULL AND cardinality(v_assets) = 1 THEN
    -- Fast path, one asset, nobody queued: a single upsert that only succeeds when the lease
    -- is free, expired or already ours. Otherwise fall through to the general path.
    v_asset := v_assets[1];
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || chr(31) || v_asset, 7423004));
    IF NOT EXISTS (SELECT 1 FROM execution.execution_lock_waiters w
                    WHERE w.tenant = p_tenant AND w.asset = v_asset) THEN
      v_token := execution.lock_take(p_tenant, v_asset, p_execution_id, p_owner,
                                     p_ttl_seconds, v_now);
      IF v_token IS NOT NULL THEN
        acquired := true;
        tokens := jsonb_build_object(v_asset, v_token);
        waiters_ahead := 0;
        RETURN;
      END IF;
    END IF;
  END IF;
  PERFORM execution.lock_guard(p_tenant, v_assets);
  IF v_ticket IS NULL THEN  -- a retried request keeps the place it already has in the queue
    SELECT min(w.ticket) INTO v_ticket FROM execution.execution_lock_waiters w
     WHERE w.tenant = p_tenant AND w.execution_id = p_execution_id AND w.asset = ANY (v_assets);
  END IF;
  FOREACH v_asset IN ARRAY v_assets LOOP
    SELECT * INTO v_lock FROM execution.execution_locks l
     WHERE l.tenant = p_tenant AND l.asset = v_asset;
    v_held := FOUND AND v_lock.execution_id <> p_execution_id AND v_lock.expires_at > v_now;
    SELECT count(*) INTO v_ahead FROM execution.execution_lock_waiters w
     WHERE w.tenant = p_tenant AND w.asset = v_asset AND w.seen_until > v_now
       AND w.execution_id <> p_execution_id AND (v_ticket IS NULL OR w.ticket < v_ticket);
    IF v_held OR v_ahead > 0 THEN
      IF p_enqueue THEN
        IF v_ticket IS NULL THEN
          v_ticket := nextval('execution.lock_ticket_seq');
        END IF;
        INSERT INTO execution.execution_lock_waiters AS w
          (tenant, asset, execution_id, owner, ticket, enqueued_at, seen_until)
        SELECT p_tenant, a, p_execution_id, p_owner, v_ticket, v_now,
               v_now + make_interval(secs => p_wait_ttl_seconds)
          FROM unnest(v_assets) a
        ON CONFLICT (tenant, asset, execution_id) DO UPDATE
          SET seen_until = EXCLUDED.seen_until, owner = EXCLUDED.owner;
      END IF;
      IF v_lock.execution_id IS NOT NULL AND v_lock.expires_at <= v_now THEN
        v_lock.execution_id := NULL;  -- an expired lease names no holder
      END IF;
      acquired := false;
      ticket := v_ticket;
      blocked_asset := v_asset;
      IF v_lock.execution_id <> p_execution_id THEN
        holder_execution_id := v_lock.execution_id;
        holder_owner := v_lock.owner;
        holder_expires_at := v_lock.expires_at;
      END IF;
      waiters_ahead := v_ahead;
      RETURN;
    END IF;
  END LOOP;
  -- Free and our turn on every asset: take them all (re-entrant for the same execution).
  FOREACH v_asset IN ARRAY v_assets LOOP
    v_token := execution.lock_take(p_tenant, v_asset, p_execution_id, p_owner, p_ttl_seconds,
                                   v_now);
    v_tokens := v_tokens || jsonb_build_object(v_asset, v_token);
  END LOOP;
  IF v_ticket IS NOT NULL THEN
    DELETE FROM execution.execution_lock_waiters w
     WHERE w.tenant = p_tenant AND w.execution_id = p_execution_id AND w.asset = ANY (v_assets);
  END IF;
  acquired := true;
  ticket := v_ticket;
  tokens := v_tokens;
  waiters_ahead := 0;
END $$;

-- Extend the leases this execution still holds (and has not let expire); returns them.
CREATE OR REPLACE FUNCTION execution.lock_renew(
  p_tenant text, p_assets text[], p_execution_id text, p_ttl_seconds double precision)
RETURNS TABLE (asset text, fencing_token bigint, expires_at timestamptz)
LANGUAGE sql AS $$
  UPDATE execution.execution_locks l
     SET renewed_at = clock_timestamp(),
         expires_at = clock_timestamp() + make_interval(secs => p_ttl_seconds)
   WHERE l.tenant = p_tenant AND l.asset = ANY (p_assets) AND l.execution_id = p_execution_id
     AND l.expires_at > clock_timestamp()
  RETURNING l.asset, l.fencing_token, l.expires_at
$$;

-- Release this execution's leases (all of them when p_assets is NULL) and its waiter rows,
-- then wake the next waiter of each freed asset. Returns the released assets (sorted).
CREATE OR REPLACE FUNCTION execution.lock_release(
  p_tenant text, p_assets text[], p_execution_id text)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
  v_assets text[];
  v_released text[];
  v_one text;
BEGIN
  IF cardinality(p_assets) = 1 THEN
    -- Fast path, one asset: delete our lease and waiter row, wake the next waiter if any.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || chr(31) || p_assets[1], 7423004));
    DELETE FROM execution.execution_locks l
     WHERE l.tenant = p_tenant AND l.asset = p_assets[1] AND l.execution_id = p_execution_id
    RETURNING l.asset INTO v_one;
    IF EXISTS (SELECT 1 FROM execution.execution_lock_waiters w
                WHERE w.tenant = p_tenant AND w.asset = p_assets[1]) THEN
      DELETE FROM execution.execution_lock_waiters w
       WHERE w.tenant = p_tenant AND w.asset = p_assets[1] AND w.execution_id = p_execution_id;
      PERFORM execution.lock_notify_heads(p_tenant, p_assets);
    END IF;
    RETURN CASE WHEN v_one IS NULL THEN '{}'::text[] ELSE ARRAY[v_one] END;
  END IF;
  IF p_assets IS NULL THEN
    v_assets := ARRAY(SELECT a FROM (
        SELECT l.asset AS a FROM execution.execution_locks l
         WHERE l.tenant = p_tenant AND l.execution_id = p_execution_id
        UNION
        SELECT w.asset FROM execution.execution_lock_waiters w
         WHERE w.tenant = p_tenant AND w.execution_id = p_execution_id) s ORDER BY 1);
  ELSE
    v_assets := ARRAY(SELECT DISTINCT a FROM unnest(p_assets) a ORDER BY 1);
  END IF;
  PERFORM execution.lock_guard(p_tenant, v_assets);
  WITH d AS (
    DELETE FROM execution.execution_locks l
     WHERE l.tenant = p_tenant AND l.asset = ANY (v_assets) AND l.execution_id = p_execution_id
    RETURNING l.asset)
  SELECT coalesce(array_agg(d.asset ORDER BY d.asset), '{}') INTO v_released FROM d;
  DELETE FROM execution.execution_lock_waiters w
   WHERE w.tenant = p_tenant AND w.asset = ANY (v_assets) AND w.execution_id = p_execution_id;
  PERFORM execution.lock_notify_heads(p_tenant, v_assets);
  RETURN v_released;
END $$;

-- Leave the queue (timeout, cancel) without touching held leases; wake the next waiters.
CREATE OR REPLACE FUNCTION execution.lock_dequeue(p_tenant text, p_execution_id text)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE v_assets text[];
BEGIN
  v_assets := ARRAY(SELECT w.asset FROM execution.execution_lock_waiters w
                     WHERE w.tenant = p_tenant AND w.execution_id = p_execution_id ORDER BY 1);
  PERFORM execution.lock_guard(p_tenant, v_assets);
  DELETE FROM execution.execution_lock_waiters w
   WHERE w.tenant = p_tenant AND w.execution_id = p_execution_id;
  PERFORM execution.lock_notify_heads(p_tenant, v_assets);
  RETURN QUERY SELECT unnest(v_assets);
END $$;

-- Delete expired leases and stale waiter rows; wake the next waiter of each freed asset.
CREATE OR REPLACE FUNCTION execution.lock_reap()
RETURNS TABLE (tenant text, asset text, execution_id text)
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  DELETE FROM execution.execution_lock_waiters w WHERE w.seen_until <= clock_timestamp();
  FOR r IN SELECT l.tenant, l.asset FROM execution.execution_locks l
            WHERE l.expires_at <= clock_timestamp() ORDER BY l.tenant, l.asset LOOP
    PERFORM execution.lock_guard(r.tenant, ARRAY[r.asset]);
    RETURN QUERY
      DELETE FROM execution.execution_locks l
       WHERE l.tenant = r.tenant AND l.asset = r.asset AND l.expires_at <= clock_timestamp()
      RETURNING l.tenant, l.asset, l.execution_id;
    PERFORM execution.lock_notify_heads(r.tenant, ARRAY[r.asset]);
  END LOOP;
END $$;

-- ---------------------------------------------------------------------------------------------
-- RBAC (safety/rbac.py): rules, role bindings, a revision bumped on every change (so workers
-- reload only when something changed), and the audit trail.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS execution.rbac_rules (
  id            text PRIMARY KEY,
  effect        text NOT NULL CHECK (effect IN ('allow', 'deny')),
  tenants       text[] NOT NULL DEFAULT '{*}',
  subjects      text[] NOT NULL DEFAULT '{*}',
  actions       text[] NOT NULL DEFAULT '{*}',
  assets        text[] NOT NULL DEFAULT '{*}',
  tools         text[] NOT NULL DEFAULT '{*}',
  environments  text[] NOT NULL DEFAULT '{*}',
  description   text NOT NULL DEFAULT '',
  enabled       boolean NOT NULL DEFAULT true,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS execution.rbac_role_bindings (
  tenant        text NOT NULL,
  actor         text NOT NULL,
  role          text NOT NULL,
  environments  text[] NOT NULL DEFAULT '{*}',
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, actor, role)
);

CREATE TABLE IF NOT EXISTS execution.rbac_policy_state (
  id        int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  revision  bigint NOT NULL DEFAULT 0,
  changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO execution.rbac_policy_state (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION execution.rbac_bump_revision() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE execution.rbac_policy_state SET revision = revision + 1, changed_at = now() WHERE id = 1;
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS rbac_rules_changed ON execution.rbac_rules;
CREATE TRIGGER rbac_rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
  ON execution.rbac_rules FOR EACH STATEMENT EXECUTE FUNCTION execution.rbac_bump_revision();
DROP TRIGGER IF EXISTS rbac_bindings_changed ON execution.rbac_role_bindings;
CREATE TRIGGER rbac_bindings_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
  ON execution.rbac_role_bindings FOR EACH STATEMENT
  EXECUTE FUNCTION execution.rbac_bump_revision();

CREATE TABLE IF NOT EXISTS execution.rbac_audit (
  id              bigserial PRIMARY KEY,
  at              timestamptz NOT NULL DEFAULT now(),
  tenant          text NOT NULL,
  actor           text NOT NULL,
  roles           text[] NOT NULL DEFAULT '{}',
  action          text NOT NULL,
  resource        text,
  tool            text,
  environment     text NOT NULL,
  execution_id    text,
  step_id         text,
  decision        text NOT NULL CHECK (decision IN ('allow', 'deny')),
  rule_id         text,
  reason          text NOT NULL,
  policy_version  text NOT NULL
);
CREATE INDEX IF NOT EXISTS rbac_audit_exec_idx ON execution.rbac_audit (execution_id, at);
CREATE INDEX IF NOT EXISTS rbac_audit_actor_idx ON execution.rbac_audit (tenant, actor, at DESC);

-- ---------------------------------------------------------------------------------------------
-- Idempotency (safety/idempotency.py): one row per run of a (tenant, key); run numbers grow
-- forever so workflow ids never repeat, the window decides which runs count as duplicates.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS execution.idempotency_records (
  tenant                 text NOT NULL,
  idem_key               text NOT NULL,
  run_number             int NOT NULL,
  execution_id           uuid NOT NULL UNIQUE,
  workflow_id            text NOT NULL UNIQUE,
  status                 text NOT NULL DEFAULT 'pending',
  previous_execution_id  uuid,
  actor                  text,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, idem_key, run_number)
);
CREATE INDEX IF NOT EXISTS idempotency_records_created_idx
  ON execution.idempotency_records (created_at);

-- Claim (tenant, key): the latest run inside the window is returned unless it ended in a
-- retryable way (failed, cancelled, timeout, rejected); then, or when there is none, a new run
-- is inserted. Serialised per key by an advisory lock, so concurrent duplicates get one run.
-- The live status is the mirror's (executions) unless the record already holds a final one.
CREATE OR REPLACE FUNCTION execution.idempotency_claim(
  p_tenant text, p_key text, p_window_seconds double precision, p_execution_id uuid,
  p_workflow_prefix text, p_actor text DEFAULT NULL)
RETURNS TABLE (is_new boolean, run_number int, execution_id uuid, workflow_id text,
               status text, previous_execution_id uuid, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  v_last record;
  v_status text;
  v_max int;
  v_prev uuid;
  v_run int;
  v_wf text;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || chr(31) || p_key, 7423005));
  SELECT r.*, e.status::text AS live_status INTO v_last
    FROM execution.idempotency_records r
    LEFT JOIN execution.executions e ON e.execution_id = r.execution_id
   WHERE r.tenant = p_tenant AND r.idem_key = p_key
   ORDER BY r.run_number DESC LIMIT 1;
  IF FOUND THEN
    v_max := v_last.run_number;
    v_status := CASE
      WHEN v_last.status IN ('completed', 'failed', 'cancelled', 'timeout', 'rejected', 'partial')
        THEN v_last.status
      ELSE coalesce(v_last.live_status, v_last.status) END;
    IF v_last.created_at > now() - make_interval(secs => p_window_seconds) THEN
      IF v_status NOT IN ('failed', 'cancelled', 'timeout', 'rejected') THEN
        RETURN QUERY SELECT false, v_last.run_number, v_last.execution_id, v_last.workflow_id,
                            v_status, v_last.previous_execution_id, v_last.created_at;
        RETURN;
      END IF;
      v_prev := v_last.execution_id;
    END IF;
  ELSE
    v_max := 0;
  END IF;
  v_run := v_max + 1;
  v_wf := CASE WHEN v_run = 1 THEN p_workflow_prefix ELSE p_workflow_prefix || '-r' || v_run END;
  INSERT INTO execution.idempotency_records AS r
    (tenant, idem_key, run_number, execution_id, workflow_id, status, previous_execution_id,
     actor)
  VALUES (p_tenant, p_key, v_run, p_execution_id, v_wf, 'pending', v_prev, p_actor);
  RETURN QUERY SELECT true, v_run, p_execution_id, v_wf, 'pending'::text, v_prev, now();
END $$;
