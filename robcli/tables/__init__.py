"""Parquet tables: one schema module, one atomic validating writer, one checking reader."""

from robcli.tables.io import Table, provenance, read_table, write_table
from robcli.tables.schema import SCHEMA_VERSION, SCHEMAS

__all__ = ["SCHEMAS", "SCHEMA_VERSION", "Table", "provenance", "read_table", "write_table"]
