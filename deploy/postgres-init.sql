-- The execution mirror lives in its own database and role beside Temporal's.
CREATE ROLE opsconductor LOGIN PASSWORD 'opsconductor';
CREATE DATABASE opsconductor OWNER opsconductor;
