"""Database access: declarative base, engine (SQLite or Postgres), sessions, migrations."""
