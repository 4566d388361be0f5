"""Alembic revision files of the cloud database (a package so wheels ship them)."""
