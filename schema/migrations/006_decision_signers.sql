-- Signed operator decisions (safety/signatures.py): the principals' SSH public keys, merged
-- with the policy file's `allowed_signers`. A change bumps the RBAC revision, so workers
-- reload the keys at their next decision.
CREATE TABLE IF NOT EXISTS execution.rbac_signers (
  principal   text NOT NULL CHECK (principal <> '' AND principal !~ '\s'),
  public_key  text NOT NULL CHECK (public_key ~ '^\S+ \S+$'),   -- "ssh-ed25519 AAAA..."
  options     text NOT NULL DEFAULT '',   -- allowed_signers options, e.g. valid-before="..."
  comment     text NOT NULL DEFAULT '',
  enabled     boolean NOT NULL DEFAULT true,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (principal, public_key)
);

DROP TRIGGER IF EXISTS rbac_signers_changed ON execution.rbac_signers;
CREATE TRIGGER rbac_signers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
  ON execution.rbac_signers FOR EACH STATEMENT EXECUTE FUNCTION execution.rbac_bump_revision();
