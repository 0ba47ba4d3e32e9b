-- Asset leases keyed by the real resource: one holder per asset across ALL tenants.
--
-- 002 keyed leases and waiters by (tenant, asset), but the inventory and the hosts are shared:
-- two tenants changing one host must exclude each other. The tenant stays on every row (who
-- holds or waits, for visibility and audit); the functions keep their signatures so callers
-- are unchanged, and take their advisory locks per asset. Idempotent: safe to apply twice.

-- Two tenants may each hold a lease on the same asset from before this migration: keep the
-- one with the lowest fencing token (the older holder); the newer one fails its next fencing
-- check and does not act.
DELETE FROM execution.execution_locks l
 USING execution.execution_locks o
 WHERE l.asset = o.asset AND l.fencing_token > o.fencing_token;
DELETE FROM execution.execution_lock_waiters w
 USING execution.execution_lock_waiters o
 WHERE w.asset = o.asset AND w.execution_id = o.execution_id AND w.ticket > o.ticket;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'execution_locks_pkey'
               AND conrelid = 'execution.execution_locks'::regclass
               AND array_length(conkey, 1) = 2) THEN
    ALTER TABLE execution.execution_locks DROP CONSTRAINT execution_locks_pkey;
    ALTER TABLE execution.execution_locks ADD PRIMARY KEY (asset);
  END IF;
  IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'execution_lock_waiters_pkey'
               AND conrelid = 'execution.execution_lock_waiters'::regclass
               AND array_length(conkey, 1) = 3) THEN
    ALTER TABLE execution.execution_lock_waiters DROP CONSTRAINT execution_lock_waiters_pkey;
    ALTER TABLE execution.execution_lock_waiters ADD PRIMARY KEY (asset, execution_id);
  END IF;
END $$;

DROP INDEX IF EXISTS execution.execution_lock_waiters_queue_idx;
CREATE INDEX IF NOT EXISTS execution_lock_waiters_asset_queue_idx
  ON execution.execution_lock_waiters (asset, ticket);
DROP INDEX IF EXISTS execution.execution_lock_waiters_exec_idx;
CREATE INDEX IF NOT EXISTS execution_lock_waiters_execution_idx
  ON execution.execution_lock_waiters (execution_id);

-- Serialise every lease operation on one asset, whatever the tenant; assets in sorted order.
CREATE OR REPLACE FUNCTION execution.lock_guard(p_tenant text, p_assets text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  -- volatile target-list functions run after ORDER BY, so the locks are taken in sorted order
  PERFORM pg_advisory_xact_lock(hashtextextended(a, 7423004))
     FROM unnest(p_assets) a ORDER BY a;
END $$;

-- Wake the head waiter of each asset (payload = its ticket) after a lease was freed.
CREATE OR REPLACE FUNCTION execution.lock_notify_heads(p_tenant text, p_assets text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('opsc_locks', h.ticket::text)
     FROM (SELECT min(w.ticket) AS ticket FROM execution.execution_lock_waiters w
            WHERE w.asset = ANY (p_assets)
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
  ON CONFLICT (asset) DO UPDATE SET
    tenant = EXCLUDED.tenant,
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
    PERFORM pg_advisory_xact_lock(hashtextextended(v_asset, 7423004));
    IF NOT EXISTS (SELECT 1 FROM execution.execution_lock_waiters w
                    WHERE w.asset = v_asset) THEN
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
     WHERE w.execution_id = p_execution_id AND w.asset = ANY (v_assets);
  END IF;
  FOREACH v_asset IN ARRAY v_assets LOOP
    SELECT * INTO v_lock FROM execution.execution_locks l
     WHERE l.asset = v_asset;
    v_held := FOUND AND v_lock.execution_id <> p_execution_id AND v_lock.expires_at > v_now;
    SELECT count(*) INTO v_ahead FROM execution.execution_lock_waiters w
     WHERE w.asset = v_asset AND w.seen_until > v_now
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
        ON CONFLICT (asset, execution_id) DO UPDATE
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
     WHERE w.execution_id = p_execution_id AND w.asset = ANY (v_assets);
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
   WHERE l.asset = ANY (p_assets) AND l.execution_id = p_execution_id
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
    PERFORM pg_advisory_xact_lock(hashtextextended(p_assets[1], 7423004));
    DELETE FROM execution.execution_locks l
     WHERE l.asset = p_assets[1] AND l.execution_id = p_execution_id
    RETURNING l.asset INTO v_one;
    IF EXISTS (SELECT 1 FROM execution.execution_lock_waiters w
                WHERE w.asset = p_assets[1]) THEN
      DELETE FROM execution.execution_lock_waiters w
       WHERE w.asset = p_assets[1] AND w.execution_id = p_execution_id;
      PERFORM execution.lock_notify_heads(p_tenant, p_assets);
    END IF;
    RETURN CASE WHEN v_one IS NULL THEN '{}'::text[] ELSE ARRAY[v_one] END;
  END IF;
  IF p_assets IS NULL THEN
    v_assets := ARRAY(SELECT a FROM (
        SELECT l.asset AS a FROM execution.execution_locks l
         WHERE l.execution_id = p_execution_id
        UNION
        SELECT w.asset FROM execution.execution_lock_waiters w
         WHERE w.execution_id = p_execution_id) s ORDER BY 1);
  ELSE
    v_assets := ARRAY(SELECT DISTINCT a FROM unnest(p_assets) a ORDER BY 1);
  END IF;
  PERFORM execution.lock_guard(p_tenant, v_assets);
  WITH d AS (
    DELETE FROM execution.execution_locks l
     WHERE l.asset = ANY (v_assets) AND l.execution_id = p_execution_id
    RETURNING l.asset)
  SELECT coalesce(array_agg(d.asset ORDER BY d.asset), '{}') INTO v_released FROM d;
  DELETE FROM execution.execution_lock_waiters w
   WHERE w.asset = ANY (v_assets) AND w.execution_id = p_execution_id;
  PERFORM execution.lock_notify_heads(p_tenant, v_assets);
  RETURN v_released;
END $$;

-- Leave the queue (timeout, cancel) without touching held leases; wake the next waiters.
CREATE OR REPLACE FUNCTION execution.lock_dequeue(p_tenant text, p_execution_id text)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE v_assets text[];
BEGIN
  v_assets := ARRAY(SELECT w.asset FROM execution.execution_lock_waiters w
                     WHERE w.execution_id = p_execution_id ORDER BY 1);
  PERFORM execution.lock_guard(p_tenant, v_assets);
  DELETE FROM execution.execution_lock_waiters w
   WHERE w.execution_id = p_execution_id;
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
            WHERE l.expires_at <= clock_timestamp() ORDER BY l.asset LOOP
    PERFORM execution.lock_guard(r.tenant, ARRAY[r.asset]);
    RETURN QUERY
      DELETE FROM execution.execution_locks l
       WHERE l.asset = r.asset AND l.expires_at <= clock_timestamp()
      RETURNING l.tenant, l.asset, l.execution_id;
    PERFORM execution.lock_notify_heads(r.tenant, ARRAY[r.asset]);
  END LOOP;
END $$;
